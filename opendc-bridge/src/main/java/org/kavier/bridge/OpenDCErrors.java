package org.kavier.bridge;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Turns exceptions thrown inside OpenDC into {@link BridgeException}s whose message says which input was
 * wrong. OpenDC's own messages are kept; the bridge adds the file and a hint.
 *
 * <p>Classification looks at where in OpenDC the exception was raised (the packages on the stack of every
 * cause) and at well-known messages, for example Parquet's "incompatible types" when a workload column has
 * the wrong physical type or nullability.
 */
final class OpenDCErrors {
    static final String WORKLOAD_SCHEMA_HINT =
            "OpenDC reads <workload>/tasks.parquet (id INT32, submission_time INT64 epoch ms, duration INT64 ms, "
                    + "cpu_count INT32, cpu_capacity DOUBLE MHz, mem_capacity INT64 KB, all non-nullable; optional: "
                    + "name STRING, gpu_count INT32, gpu_capacity DOUBLE, parents/children LIST<INT32>, deferrable "
                    + "BOOLEAN, deadline INT64) and <workload>/fragments.parquet (id INT32, duration INT64 ms, "
                    + "cpu_usage DOUBLE MHz, all non-nullable; optional gpu_usage DOUBLE MHz); a required column "
                    + "must be present, non-nullable and of exactly that physical type";
    static final String TOPOLOGY_HINT =
            "check the keys (OpenDC's release reader rejects unknown keys and needs cpu.coreCount, cpu.coreSpeed, "
                    + "memory.memorySize, and modelType/idlePower/maxPower in each power model) and the units";

    private OpenDCErrors() {}

    /** Errors while OpenDC reads the experiment JSON ({@code getExperiment}). */
    static BridgeException whileLoading(String experimentPath, Throwable error) {
        if (error instanceof BridgeException be) {
            return be;
        }
        String what = describe(error);
        if (isInstallationFailure(error)) {
            return installation("reading experiment " + experimentPath, what, error);
        }
        String lower = what.toLowerCase(Locale.ROOT);
        if (lower.contains("path to the workload")) {
            return new BridgeException(BridgeException.Kind.BAD_WORKLOAD,
                    "experiment " + experimentPath + " names a workload directory that does not exist: " + what, error);
        }
        if (lower.contains("path to the topology")) {
            return new BridgeException(BridgeException.Kind.BAD_TOPOLOGY,
                    "experiment " + experimentPath + " names a topology file that does not exist: " + what, error);
        }
        return new BridgeException(BridgeException.Kind.BAD_EXPERIMENT,
                "OpenDC could not read experiment file " + experimentPath + ": " + what
                        + ". Expected OpenDC's experiment JSON: {\"name\", \"outputFolder\", \"topologies\": "
                        + "[{\"pathToFile\"}], \"workloads\": [{\"pathToFile\", \"type\": \"ComputeWorkload\"}], ...}; "
                        + "unknown keys are rejected.",
                error);
    }

    /** Errors while OpenDC simulates one scenario ({@code runScenario}). */
    static BridgeException whileRunning(OpenDCApi.ScenarioInfo scenario, long seed, Throwable error) {
        if (error instanceof BridgeException be) {
            return be;
        }
        String what = describe(error);
        String where = "scenario " + scenario.id() + " seed " + seed;
        if (isInstallationFailure(error)) {
            return installation("simulating " + where, what, error);
        }
        switch (classify(error)) {
            case BAD_CARBON_TRACE:
                return new BridgeException(BridgeException.Kind.BAD_CARBON_TRACE,
                        "OpenDC could not use the carbon trace of a power source in topology " + scenario.topologyPath()
                                + " (" + where + "): " + what + ". A carbon trace is one Parquet file with timestamp "
                                + "(INT64 TIMESTAMP(MILLIS)) and carbon_intensity (DOUBLE, gCO2/kWh); "
                                + "carbonTracePath should be absolute.",
                        error);
            case BAD_TOPOLOGY:
                return new BridgeException(BridgeException.Kind.BAD_TOPOLOGY,
                        "OpenDC rejected topology file " + scenario.topologyPath() + " (" + where + "): " + what
                                + "; " + TOPOLOGY_HINT + ".",
                        error);
            case BAD_WORKLOAD:
                return new BridgeException(BridgeException.Kind.BAD_WORKLOAD,
                        "OpenDC could not load workload " + scenario.workloadPath() + " (" + where + "): " + what
                                + ". " + WORKLOAD_SCHEMA_HINT + ".",
                        error);
            default:
                return new BridgeException(BridgeException.Kind.OPENDC_FAILURE,
                        "OpenDC failed while simulating " + where + " (topology " + scenario.topologyPath()
                                + ", workload " + scenario.workloadPath() + "): " + what,
                        error);
        }
    }

    static BridgeException.Kind classify(Throwable error) {
        List<Throwable> chain = chain(error);
        StringBuilder messages = new StringBuilder();
        for (Throwable t : chain) {
            messages.append(' ').append(t.getClass().getName()).append(' ').append(t.getMessage());
        }
        String text = messages.toString().toLowerCase(Locale.ROOT);
        boolean carbon = false;
        boolean topology = false;
        boolean workload = false;
        for (Throwable t : chain) {
            for (StackTraceElement frame : t.getStackTrace()) {
                String cls = frame.getClassName();
                if (cls.startsWith("org.opendc.trace.formats.carbon") || cls.startsWith("org.opendc.compute.carbon")) {
                    carbon = true;
                } else if (cls.startsWith("org.opendc.compute.topology")) {
                    topology = true;
                } else if (cls.startsWith("org.opendc.trace.formats.workload")
                        || cls.startsWith("org.opendc.compute.workload")) {
                    workload = true;
                }
            }
        }
        if (carbon || text.contains("carbon_intensity")) {
            return BridgeException.Kind.BAD_CARBON_TRACE;
        }
        if (topology) {
            return BridgeException.Kind.BAD_TOPOLOGY;
        }
        if (workload || text.contains("incompatible types") || text.contains("tasks.parquet")
                || text.contains("fragments.parquet")) {
            return BridgeException.Kind.BAD_WORKLOAD;
        }
        return BridgeException.Kind.OPENDC_FAILURE;
    }

    /**
     * A class or method that OpenDC needs is missing or incompatible: the jar was built with a broken
     * dependency set (for example a POM naming the multiplatform 'kotlin-logging' root artifact, which gives
     * Maven no JVM classes). Linkage errors can hide behind wrappers, so the whole cause chain is checked.
     */
    static boolean isInstallationFailure(Throwable error) {
        for (Throwable t : chain(error)) {
            if (t instanceof LinkageError || t instanceof ClassNotFoundException) {
                return true;
            }
        }
        return false;
    }

    private static BridgeException installation(String during, String what, Throwable error) {
        return new BridgeException(BridgeException.Kind.OPENDC_INSTALLATION,
                "OpenDC's installation is broken (a class it needs is missing or incompatible) while " + during
                        + ": " + what + ". This is not a problem with your input files: rebuild the bridge jar "
                        + "('kavier bridge build' or 'make bridge') so that OpenDC's full runtime class path is "
                        + "inside it.",
                error);
    }

    /** "Outer: message; caused by Root: message" without repeating identical messages. */
    static String describe(Throwable error) {
        List<Throwable> chain = chain(error);
        Throwable root = chain.get(chain.size() - 1);
        String outer = oneLine(error);
        if (root == error) {
            return outer;
        }
        String inner = oneLine(root);
        if (error.getMessage() != null && root.getMessage() != null && error.getMessage().contains(root.getMessage())) {
            return outer;
        }
        return outer + "; caused by " + inner;
    }

    private static String oneLine(Throwable t) {
        String msg = t.getMessage();
        String name = t.getClass().getSimpleName();
        if (msg == null || msg.isBlank()) {
            return name;
        }
        msg = msg.replaceAll("\\s+", " ").trim();
        if (msg.length() > 1500) {
            msg = msg.substring(0, 1500) + "...";
        }
        return name + ": " + msg;
    }

    static List<Throwable> chain(Throwable error) {
        List<Throwable> chain = new ArrayList<>();
        Map<Throwable, Boolean> seen = new IdentityHashMap<>();
        for (Throwable t = error; t != null && !seen.containsKey(t); t = t.getCause()) {
            seen.put(t, Boolean.TRUE);
            chain.add(t);
        }
        return chain;
    }
}
