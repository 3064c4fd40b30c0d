package org.kavier.bridge;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.UnknownHostException;
import py4j.GatewayServer;

/**
 * Starts the Py4J gateway for Kavier.
 *
 * <pre>
 *   KAVIER_BRIDGE_TOKEN=&lt;secret&gt; java -jar kavier-opendc-bridge.jar [--exit-on-stdin-eof]
 *   java -jar kavier-opendc-bridge.jar --version
 * </pre>
 *
 * <p>The gateway listens on 127.0.0.1 only, on a free port chosen by the OS, and accepts only clients that
 * present the token from the environment variable {@value #TOKEN_ENV} (never taken from the command line,
 * where other users could read it). Once listening it prints exactly one line on stdout,
 * {@code KAVIER_BRIDGE_READY port=<port> pid=<pid>}; everything printed later (OpenDC's output included) goes
 * to stderr. With {@code --exit-on-stdin-eof} the JVM exits when its stdin is closed, i.e. when the Python
 * process that started it dies.
 */
public final class BridgeMain {
    /** Environment variable holding the Py4J auth token. */
    public static final String TOKEN_ENV = "KAVIER_BRIDGE_TOKEN";
    /** First word of the line printed once the gateway listens. */
    public static final String READY_PREFIX = "KAVIER_BRIDGE_READY";

    private BridgeMain() {}

    public static void main(String[] args) {
        boolean exitOnStdinEof = false;
        for (String arg : args) {
            switch (arg) {
                case "--exit-on-stdin-eof" -> exitOnStdinEof = true;
                case "--version" -> {
                    BridgeEntryPoint info = new BridgeEntryPoint();
                    System.out.println("kavier-opendc-bridge " + info.getBridgeVersion() + " (" + info.getBridgeFlavour()
                            + "), OpenDC " + (info.isOpenDCAvailable() ? info.getOpenDCVersion() : "not included")
                            + ", Java " + info.getJavaVersion());
                    return;
                }
                case "--help", "-h" -> {
                    System.out.println("usage: " + TOKEN_ENV + "=<token> java -jar kavier-opendc-bridge.jar "
                            + "[--exit-on-stdin-eof] | --version");
                    return;
                }
                default -> {
                    System.err.println("kavier-opendc-bridge: unknown argument " + arg + " (the auth token is read from "
                            + "the environment variable " + TOKEN_ENV + ", never from the command line)");
                    System.exit(2);
                }
            }
        }
        String token = System.getenv(TOKEN_ENV);
        if (token == null || token.isBlank()) {
            System.err.println("kavier-opendc-bridge: set the environment variable " + TOKEN_ENV
                    + " to a random secret; Python's OpenDCBridge does this for you.");
            System.exit(2);
            return;
        }

        InetAddress loopback;
        try {
            loopback = InetAddress.getByName("127.0.0.1");
        } catch (UnknownHostException e) {
            throw new IllegalStateException("cannot resolve 127.0.0.1", e);
        }
        BridgeEntryPoint entryPoint = new BridgeEntryPoint();
        GatewayServer server = new GatewayServer.GatewayServerBuilder(entryPoint)
                .javaAddress(loopback)
                .javaPort(0)
                .authToken(token)
                .build();
        entryPoint.setShutdownHook(() -> {
            try {
                server.shutdown();
            } finally {
                System.exit(0);
            }
        });
        server.start(true);
        int port = server.getListeningPort();
        if (port <= 0) {
            System.err.println("kavier-opendc-bridge: the Py4J gateway did not start listening");
            System.exit(3);
        }

        PrintStream stdout = System.out;
        // Keep stdout for the READY line only; whatever OpenDC prints goes to stderr.
        System.setOut(System.err);
        stdout.println(READY_PREFIX + " port=" + port + " pid=" + ProcessHandle.current().pid());
        stdout.flush();

        if (exitOnStdinEof) {
            Thread watcher = new Thread(() -> {
                InputStream in = System.in;
                byte[] buf = new byte[256];
                try {
                    while (in.read(buf) != -1) {
                        // Ignore input; only EOF matters.
                    }
                } catch (IOException e) {
                    // Treat like EOF.
                }
                System.err.println("kavier-opendc-bridge: stdin closed (parent process gone); exiting");
                Runtime.getRuntime().halt(0);
            }, "kavier-bridge-stdin-watch");
            watcher.setDaemon(true);
            watcher.start();
        }
    }
}
