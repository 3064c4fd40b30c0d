package org.kavier.bridge;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * The object Python sees as {@code gateway.entry_point}.
 *
 * <p>One experiment runs at a time (OpenDC keeps some global state). Two ways to run one:
 * <ul>
 *   <li>{@link #runExperiment(String)} blocks until the experiment is done and returns the output folder;
 *       another Python thread may poll {@link #getProgress()} meanwhile (Py4J gives every Python thread its
 *       own connection);</li>
 *   <li>{@link #startExperiment(String)} returns at once; poll {@link #getState()} / {@link #getProgress()}
 *       and fetch {@link #getResult()} (the output folder, or the run's {@link BridgeException}).</li>
 * </ul>
 * Progress is the fraction of (scenario, seed) runs finished: OpenDC's published runner has no hook for
 * progress inside one run, so a one-scenario, one-seed experiment reports 0 until it is done, then 1.
 */
public final class BridgeEntryPoint {
    /** Job states, as returned by {@link #getState()}. */
    public static final String IDLE = "IDLE";
    public static final String RUNNING = "RUNNING";
    public static final String SUCCEEDED = "SUCCEEDED";
    public static final String FAILED = "FAILED";

    private final Properties buildInfo = loadBuildInfo();
    private final Object lock = new Object();
    private volatile Job job;
    private volatile Runnable shutdownHook = () -> System.exit(0);

    /** Called by {@link BridgeMain} so that {@link #shutdown()} can stop the gateway. */
    void setShutdownHook(Runnable hook) {
        this.shutdownHook = hook;
    }

    // ------------------------------------------------------------------------------------------ information

    public String ping() {
        return "pong";
    }

    public String getBridgeVersion() {
        return buildInfo.getProperty("bridge.version", "unknown");
    }

    /** "full" (OpenDC inside) or "lite" (gateway only). */
    public String getBridgeFlavour() {
        return buildInfo.getProperty("bridge.flavour", "unknown");
    }

    /** The OpenDC release this jar was built with, or null when OpenDC is not on the class path. */
    public String getOpenDCVersion() {
        return isOpenDCAvailable() ? buildInfo.getProperty("opendc.version", "unknown") : null;
    }

    public boolean isOpenDCAvailable() {
        return OpenDCApi.isAvailable();
    }

    public String getJavaVersion() {
        return Runtime.version().toString();
    }

    public long getPid() {
        return ProcessHandle.current().pid();
    }

    // ------------------------------------------------------------------------------------------ running

    /**
     * Runs an OpenDC experiment JSON and blocks until it is done.
     *
     * @return the absolute experiment output folder, {@code <outputFolder>/<name>}; OpenDC writes
     *     {@code raw-output/<scenario>/seed=<seed>/{host,task,powerSource,battery,service}.parquet} in it.
     * @throws BridgeException naming what went wrong (bad path, experiment, topology, workload, ...).
     */
    public String runExperiment(String experimentJsonPath) throws InterruptedException {
        Job started = start(experimentJsonPath);
        started.done.await();
        return started.result();
    }

    /** Starts an experiment in the background; see {@link #getState()} and {@link #getResult()}. */
    public void startExperiment(String experimentJsonPath) {
        start(experimentJsonPath);
    }

    /** Waits up to {@code timeoutMillis} for the current run; true when it is done (or none was started). */
    public boolean awaitDone(long timeoutMillis) throws InterruptedException {
        Job current = job;
        return current == null || current.done.await(Math.max(0, timeoutMillis), TimeUnit.MILLISECONDS);
    }

    /** IDLE, RUNNING, SUCCEEDED or FAILED (of the last started experiment). */
    public String getState() {
        Job current = job;
        return current == null ? IDLE : current.state;
    }

    public boolean isDone() {
        Job current = job;
        return current != null && current.done.getCount() == 0;
    }

    /** Fraction (0..1) of the current experiment's (scenario, seed) runs that are finished. */
    public double getProgress() {
        Job current = job;
        if (current == null) {
            return 0.0;
        }
        if (SUCCEEDED.equals(current.state)) {
            return 1.0;
        }
        int total = current.totalRuns;
        return total <= 0 ? 0.0 : Math.min(1.0, (double) current.completedRuns / total);
    }

    public int getCompletedRuns() {
        Job current = job;
        return current == null ? 0 : current.completedRuns;
    }

    public int getTotalRuns() {
        Job current = job;
        return current == null ? 0 : current.totalRuns;
    }

    /** A short human-readable description of what the bridge is doing. */
    public String getPhase() {
        Job current = job;
        return current == null ? "idle" : current.phase;
    }

    /** Seconds since the current experiment started (or its total duration once done). */
    public double getElapsedSeconds() {
        Job current = job;
        if (current == null) {
            return 0.0;
        }
        long end = current.endNanos != 0 ? current.endNanos : System.nanoTime();
        return (end - current.startNanos) / 1e9;
    }

    /** The last experiment's output folder; throws its {@link BridgeException} if it failed. */
    public String getResult() {
        Job current = job;
        if (current == null) {
            throw new BridgeException(BridgeException.Kind.BAD_STATE, "no experiment has been started.");
        }
        if (current.done.getCount() != 0) {
            throw new BridgeException(BridgeException.Kind.BAD_STATE,
                    "the experiment " + current.experimentPath + " is still running (" + current.phase + ").");
        }
        return current.result();
    }

    /** The last experiment's error message, or null. */
    public String getErrorMessage() {
        Job current = job;
        return current == null || current.error == null ? null : current.error.getMessage();
    }

    /** Stops the gateway and exits the JVM shortly after this call has returned to Python. */
    public void shutdown() {
        Runnable hook = shutdownHook;
        Thread t = new Thread(() -> {
            try {
                Thread.sleep(100);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            hook.run();
        }, "kavier-bridge-shutdown");
        t.setDaemon(false);
        t.start();
    }

    // ------------------------------------------------------------------------------------------ internals

    private Job start(String experimentJsonPath) {
        File file = checkExperimentFile(experimentJsonPath);
        synchronized (lock) {
            Job current = job;
            if (current != null && current.done.getCount() != 0) {
                throw new BridgeException(BridgeException.Kind.BUSY,
                        "another experiment (" + current.experimentPath + ") is still running in this JVM; "
                                + "wait for it or start another bridge.");
            }
            Job next = new Job(file.getAbsolutePath());
            job = next;
            Thread worker = new Thread(() -> next.run(file), "kavier-opendc-runner");
            worker.setDaemon(true);
            worker.start();
            return next;
        }
    }

    private static File checkExperimentFile(String experimentJsonPath) {
        if (experimentJsonPath == null || experimentJsonPath.isBlank()) {
            throw new BridgeException(BridgeException.Kind.EXPERIMENT_NOT_FOUND,
                    "no experiment file given (expected the path of an OpenDC experiment JSON).");
        }
        File file = new File(experimentJsonPath);
        if (!file.exists()) {
            throw new BridgeException(BridgeException.Kind.EXPERIMENT_NOT_FOUND,
                    "experiment file " + file.getAbsolutePath() + " does not exist (working directory of the "
                            + "bridge JVM: " + new File("").getAbsolutePath() + ").");
        }
        if (!file.isFile() || !file.canRead()) {
            throw new BridgeException(BridgeException.Kind.EXPERIMENT_NOT_FOUND,
                    "experiment path " + file.getAbsolutePath() + " is not a readable file (expected an OpenDC "
                            + "experiment JSON).");
        }
        return file;
    }

    private static void checkInputs(OpenDCApi.ScenarioInfo info) {
        if (info.topologyPath() != null && !new File(info.topologyPath()).isFile()) {
            throw new BridgeException(BridgeException.Kind.BAD_TOPOLOGY,
                    "topology file " + info.topologyPath() + " of scenario " + info.id() + " does not exist.");
        }
        if (info.workloadPath() != null) {
            File dir = new File(info.workloadPath());
            if (!dir.isDirectory()) {
                throw new BridgeException(BridgeException.Kind.BAD_WORKLOAD,
                        "workload " + dir + " of scenario " + info.id() + " is not a directory (expected a "
                                + "directory with tasks.parquet and fragments.parquet).");
            }
            for (String name : new String[] {"tasks.parquet", "fragments.parquet"}) {
                if (!new File(dir, name).isFile()) {
                    throw new BridgeException(BridgeException.Kind.BAD_WORKLOAD,
                            "workload directory " + dir + " has no " + name + " (OpenDC needs tasks.parquet and "
                                    + "fragments.parquet).");
                }
            }
        }
    }

    private static Properties loadBuildInfo() {
        Properties props = new Properties();
        try (InputStream in = BridgeEntryPoint.class.getResourceAsStream("/kavier-bridge.properties")) {
            if (in != null) {
                props.load(in);
            }
        } catch (IOException e) {
            // Build info is informative only.
        }
        return props;
    }

    /** One experiment run; fields are written by the worker thread and read by Py4J threads. */
    private static final class Job {
        final String experimentPath;
        final CountDownLatch done = new CountDownLatch(1);
        final long startNanos = System.nanoTime();
        volatile long endNanos;
        volatile String state = RUNNING;
        volatile String phase = "starting";
        volatile int totalRuns;
        volatile int completedRuns;
        volatile String outputFolder;
        volatile BridgeException error;

        Job(String experimentPath) {
            this.experimentPath = experimentPath;
        }

        void run(File file) {
            try {
                phase = "loading OpenDC";
                OpenDCApi api = OpenDCApi.load();
                phase = "reading experiment " + experimentPath;
                List<?> scenarios;
                try {
                    scenarios = api.getExperiment(file);
                } catch (Throwable t) {
                    throw OpenDCErrors.whileLoading(experimentPath, t);
                }
                if (scenarios.isEmpty()) {
                    throw new BridgeException(BridgeException.Kind.BAD_EXPERIMENT,
                            "experiment " + experimentPath + " describes no scenario (empty topologies or workloads).");
                }
                List<OpenDCApi.ScenarioInfo> infos = new ArrayList<>();
                int total = 0;
                for (Object scenario : scenarios) {
                    OpenDCApi.ScenarioInfo info = OpenDCApi.ScenarioInfo.of(scenario);
                    checkInputs(info);
                    infos.add(info);
                    total += Math.max(0, info.runs());
                }
                totalRuns = total;
                String folder = infos.get(0).outputFolder();
                outputFolder = new File(folder).getAbsolutePath();
                try {
                    api.setupOutputFolderStructure(folder);
                } catch (Throwable t) {
                    throw new BridgeException(BridgeException.Kind.OPENDC_FAILURE,
                            "OpenDC could not create its output folder " + outputFolder + ": " + OpenDCErrors.describe(t), t);
                }
                for (int i = 0; i < scenarios.size(); i++) {
                    OpenDCApi.ScenarioInfo info = infos.get(i);
                    for (int seed = 0; seed < info.runs(); seed++) {
                        phase = "simulating scenario " + (i + 1) + "/" + scenarios.size() + " (id " + info.id()
                                + "), seed " + seed + " of " + info.runs();
                        try {
                            api.runScenario(scenarios.get(i), seed);
                        } catch (Throwable t) {
                            throw OpenDCErrors.whileRunning(info, seed, t);
                        }
                        completedRuns++;
                    }
                }
                phase = "done";
                state = SUCCEEDED;
            } catch (BridgeException e) {
                fail(e);
            } catch (Throwable t) {
                fail(new BridgeException(BridgeException.Kind.OPENDC_FAILURE,
                        "the bridge failed while running " + experimentPath + ": " + OpenDCErrors.describe(t), t));
            } finally {
                endNanos = System.nanoTime();
                done.countDown();
            }
        }

        private void fail(BridgeException e) {
            error = e;
            phase = "failed";
            state = FAILED;
            System.err.println("KAVIER_BRIDGE_ERROR " + e.getMessage());
            Throwable cause = e.getCause();
            if (cause != null) {
                cause.printStackTrace(System.err);
            }
        }

        String result() {
            if (error != null) {
                // A fresh exception so that its stack trace points at the caller, with the same message.
                throw new BridgeException(error.getKind(), error.getDetail());
            }
            return outputFolder;
        }
    }
}
