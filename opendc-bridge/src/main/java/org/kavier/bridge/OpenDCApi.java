package org.kavier.bridge;

import java.io.File;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.List;

/**
 * The handful of OpenDC entry points the bridge uses, looked up by reflection.
 *
 * <p>Reflection (instead of compiling against OpenDC) keeps the gateway usable and testable when OpenDC is
 * not on the class path (the lite build) and turns an API drift between OpenDC releases into a clear
 * {@link BridgeException.Kind#OPENDC_MISSING} message rather than a {@code NoSuchMethodError}.
 *
 * <p>Entry points (OpenDC 2.4u, checked against the published release's sources):
 * <ul>
 *   <li>{@code org.opendc.experiments.base.experiment.ExperimentFactoriesKt.getExperiment(java.io.File)}
 *       returns {@code List<Scenario>} (the cartesian product of the experiment's lists);</li>
 *   <li>{@code org.opendc.experiments.base.runner.ScenarioRunnerKt.runScenario(Scenario, long)} runs one
 *       scenario with one seed, blocking; output goes to
 *       {@code <scenario.outputFolder>/raw-output/<scenario.id>/seed=<seed>/};</li>
 *   <li>{@code org.opendc.experiments.base.runner.ExperimentRunnerKt.setupOutputFolderStructure(String)}
 *       (optional) creates the folders OpenDC's own CLI creates.</li>
 * </ul>
 * OpenDC's CLI ({@code ExperimentRunnerKt.runExperiment(List)}) runs seeds {@code 0 .. runs-1} of every
 * scenario in order; the bridge does exactly the same loop itself so it can count finished runs.
 */
final class OpenDCApi {
    static final String FACTORIES_CLASS = "org.opendc.experiments.base.experiment.ExperimentFactoriesKt";
    static final String SCENARIO_RUNNER_CLASS = "org.opendc.experiments.base.runner.ScenarioRunnerKt";
    static final String EXPERIMENT_RUNNER_CLASS = "org.opendc.experiments.base.runner.ExperimentRunnerKt";
    static final String SCENARIO_CLASS = "org.opendc.experiments.base.experiment.Scenario";

    private final Method getExperiment;
    private final Method runScenario;
    private final Method setupOutputFolderStructure;

    private OpenDCApi(Method getExperiment, Method runScenario, Method setupOutputFolderStructure) {
        this.getExperiment = getExperiment;
        this.runScenario = runScenario;
        this.setupOutputFolderStructure = setupOutputFolderStructure;
    }

    /** Whether OpenDC's experiment runner classes are on the class path. */
    static boolean isAvailable() {
        try {
            Class.forName(FACTORIES_CLASS, false, OpenDCApi.class.getClassLoader());
            Class.forName(SCENARIO_RUNNER_CLASS, false, OpenDCApi.class.getClassLoader());
            return true;
        } catch (ClassNotFoundException | LinkageError e) {
            return false;
        }
    }

    /** Looks the entry points up, or explains which one is missing. */
    static OpenDCApi load() {
        ClassLoader loader = OpenDCApi.class.getClassLoader();
        Class<?> factories;
        Class<?> scenarioRunner;
        Class<?> scenarioClass;
        try {
            factories = Class.forName(FACTORIES_CLASS, true, loader);
            scenarioRunner = Class.forName(SCENARIO_RUNNER_CLASS, true, loader);
            scenarioClass = Class.forName(SCENARIO_CLASS, false, loader);
        } catch (ClassNotFoundException | LinkageError e) {
            throw new BridgeException(
                    BridgeException.Kind.OPENDC_MISSING,
                    "OpenDC's experiment runner is not on the class path of this bridge (" + e + "). "
                            + "This jar was probably built with -Dbridge.lite; rebuild it with 'make bridge' "
                            + "(mvn package in opendc-bridge/) on a machine that can resolve "
                            + "org.opendc.experiments:opendc-experiments-base from Maven Central.",
                    e);
        }
        Method getExperiment = findStatic(factories, "getExperiment", File.class);
        Method runScenario = findStatic(scenarioRunner, "runScenario", scenarioClass, long.class);
        Method setup = null;
        try {
            Class<?> experimentRunner = Class.forName(EXPERIMENT_RUNNER_CLASS, true, loader);
            setup = experimentRunner.getMethod("setupOutputFolderStructure", String.class);
        } catch (ReflectiveOperationException | LinkageError e) {
            // Optional: only creates empty analysis folders.
        }
        return new OpenDCApi(getExperiment, runScenario, setup);
    }

    private static Method findStatic(Class<?> owner, String name, Class<?>... params) {
        try {
            return owner.getMethod(name, params);
        } catch (NoSuchMethodException e) {
            List<String> seen = new ArrayList<>();
            for (Method m : owner.getMethods()) {
                if (m.getName().equals(name)) {
                    seen.add(m.toGenericString());
                }
            }
            throw new BridgeException(
                    BridgeException.Kind.OPENDC_MISSING,
                    "this OpenDC release has no " + owner.getName() + "." + name + " taking "
                            + describe(params) + " (found: " + (seen.isEmpty() ? "none" : String.join("; ", seen))
                            + "). The bridge was written against OpenDC 2.4u; rebuild it with that version "
                            + "(-Dopendc.version=2.4u).",
                    e);
        }
    }

    private static String describe(Class<?>[] params) {
        List<String> names = new ArrayList<>();
        for (Class<?> p : params) {
            names.add(p.getName());
        }
        return "(" + String.join(", ", names) + ")";
    }

    /** {@code getExperiment(File)}; exceptions from OpenDC are rethrown unwrapped. */
    List<?> getExperiment(File experimentFile) throws Throwable {
        Object result = invoke(getExperiment, experimentFile);
        if (!(result instanceof List<?> list)) {
            throw new BridgeException(
                    BridgeException.Kind.OPENDC_MISSING,
                    "OpenDC's getExperiment returned " + (result == null ? "null" : result.getClass().getName())
                            + " instead of a list of scenarios.");
        }
        return list;
    }

    /** {@code runScenario(scenario, seed)}; exceptions from OpenDC are rethrown unwrapped. */
    void runScenario(Object scenario, long seed) throws Throwable {
        invoke(runScenario, scenario, seed);
    }

    /** {@code setupOutputFolderStructure(folder)} when this OpenDC release has it. */
    void setupOutputFolderStructure(String folder) throws Throwable {
        if (setupOutputFolderStructure != null) {
            invoke(setupOutputFolderStructure, folder);
        }
    }

    private static Object invoke(Method method, Object... args) throws Throwable {
        try {
            return method.invoke(null, args);
        } catch (InvocationTargetException e) {
            throw e.getCause() != null ? e.getCause() : e;
        }
    }

    /** The few scenario properties the bridge needs (Kotlin data class getters). */
    record ScenarioInfo(int id, String name, String outputFolder, int runs, String topologyPath, String workloadPath) {
        static ScenarioInfo of(Object scenario) {
            Object topologySpec = get(scenario, "getTopologySpec");
            Object workloadSpec = get(scenario, "getWorkloadSpec");
            return new ScenarioInfo(
                    ((Number) get(scenario, "getId")).intValue(),
                    String.valueOf(get(scenario, "getName")),
                    String.valueOf(get(scenario, "getOutputFolder")),
                    ((Number) get(scenario, "getRuns")).intValue(),
                    topologySpec == null ? null : String.valueOf(get(topologySpec, "getPathToFile")),
                    workloadSpec == null ? null : String.valueOf(get(workloadSpec, "getPathToFile")));
        }

        private static Object get(Object target, String getter) {
            try {
                return target.getClass().getMethod(getter).invoke(target);
            } catch (ReflectiveOperationException e) {
                throw new BridgeException(
                        BridgeException.Kind.OPENDC_MISSING,
                        "OpenDC's " + target.getClass().getName() + " has no usable " + getter + "() (" + e
                                + "); the bridge was written against OpenDC 2.4u.",
                        e);
            }
        }
    }
}
