package org.kavier.bridge;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.PrimitiveType.PrimitiveTypeName;
import org.apache.parquet.schema.Type;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class BridgeEntryPointTest {

    private static boolean openDC() {
        return OpenDCApi.isAvailable();
    }

    @Test
    void missingExperimentFileIsNamed(@TempDir Path tmp) {
        BridgeEntryPoint bridge = new BridgeEntryPoint();
        Path missing = tmp.resolve("nope/experiment.json");
        BridgeException e = assertThrows(BridgeException.class, () -> bridge.runExperiment(missing.toString()));
        assertEquals(BridgeException.Kind.EXPERIMENT_NOT_FOUND, e.getKind());
        assertTrue(e.getMessage().startsWith("[EXPERIMENT_NOT_FOUND]"), e.getMessage());
        assertTrue(e.getMessage().contains(missing.toString()), e.getMessage());
        assertEquals(BridgeEntryPoint.IDLE, bridge.getState());
    }

    @Test
    void directoryIsNotAnExperimentFile(@TempDir Path tmp) {
        BridgeEntryPoint bridge = new BridgeEntryPoint();
        BridgeException e = assertThrows(BridgeException.class, () -> bridge.startExperiment(tmp.toString()));
        assertEquals(BridgeException.Kind.EXPERIMENT_NOT_FOUND, e.getKind());
    }

    @Test
    void workloadWriterUsesOpenDCsPhysicalTypes(@TempDir Path tmp) throws IOException {
        TinyExperiment exp = new TinyExperiment(tmp).writeAll();
        MessageType tasks = LocalParquet.schema(exp.workload.resolve("tasks.parquet"));
        assertColumn(tasks, "id", PrimitiveTypeName.INT32, Type.Repetition.REQUIRED);
        assertColumn(tasks, "submission_time", PrimitiveTypeName.INT64, Type.Repetition.REQUIRED);
        assertColumn(tasks, "duration", PrimitiveTypeName.INT64, Type.Repetition.REQUIRED);
        assertColumn(tasks, "cpu_count", PrimitiveTypeName.INT32, Type.Repetition.REQUIRED);
        assertColumn(tasks, "cpu_capacity", PrimitiveTypeName.DOUBLE, Type.Repetition.REQUIRED);
        assertColumn(tasks, "mem_capacity", PrimitiveTypeName.INT64, Type.Repetition.REQUIRED);
        assertColumn(tasks, "gpu_count", PrimitiveTypeName.INT32, Type.Repetition.OPTIONAL);
        assertColumn(tasks, "gpu_capacity", PrimitiveTypeName.DOUBLE, Type.Repetition.OPTIONAL);
        MessageType fragments = LocalParquet.schema(exp.workload.resolve("fragments.parquet"));
        assertColumn(fragments, "id", PrimitiveTypeName.INT32, Type.Repetition.REQUIRED);
        assertColumn(fragments, "duration", PrimitiveTypeName.INT64, Type.Repetition.REQUIRED);
        assertColumn(fragments, "cpu_usage", PrimitiveTypeName.DOUBLE, Type.Repetition.REQUIRED);
        assertColumn(fragments, "gpu_usage", PrimitiveTypeName.DOUBLE, Type.Repetition.OPTIONAL);
        assertEquals(2, LocalParquet.rows(exp.workload.resolve("tasks.parquet")).size());
    }

    @Test
    void runsTinyExperimentForReal(@TempDir Path tmp) throws Exception {
        assumeTrue(openDC(), "OpenDC is not on the class path (lite build)");
        TinyExperiment exp = new TinyExperiment(tmp).writeAll();
        BridgeEntryPoint bridge = new BridgeEntryPoint();

        String out = bridge.runExperiment(exp.experiment.toString());

        assertEquals(exp.output.resolve("tiny").toAbsolutePath().toString(), out);
        assertEquals(BridgeEntryPoint.SUCCEEDED, bridge.getState());
        assertEquals(1.0, bridge.getProgress());
        assertEquals(1, bridge.getCompletedRuns());
        Path seed = Path.of(out, "raw-output", "0", "seed=0");
        Path host = seed.resolve("host.parquet");
        Path powerSource = seed.resolve("powerSource.parquet");
        assertTrue(Files.isRegularFile(host), "missing " + host);
        assertTrue(Files.isRegularFile(powerSource), "missing " + powerSource);

        List<Group> hostRows = LocalParquet.rows(host);
        assertFalse(hostRows.isEmpty(), "host.parquet has no rows");
        double hostEnergy = 0;
        for (Group row : hostRows) {
            hostEnergy += row.getFloat("energy_usage", 0);
        }
        assertTrue(hostEnergy > 0, "host energy " + hostEnergy);
        // CPU draws 0 W, so the host's energy is the GPU's: (I + (M - I) u) T, within 1%.
        double expected = TinyExperiment.expectedEnergyJoules();
        assertEquals(expected, hostEnergy, 0.01 * expected, "host energy (J)");

        double sourceEnergy = 0;
        for (Group row : LocalParquet.rows(powerSource)) {
            sourceEnergy += row.getFloat("energy_usage", 0);
        }
        assertEquals(expected, sourceEnergy, 0.01 * expected, "power source energy (J)");
    }

    @Test
    void badTopologyIsNamed(@TempDir Path tmp) throws Exception {
        assumeTrue(openDC(), "OpenDC is not on the class path (lite build)");
        TinyExperiment exp = new TinyExperiment(tmp).writeAll();
        exp.writeTopology(TinyExperiment.topologyJson().replace("\"coreCount\": 4", "\"cores\": 4"));
        BridgeEntryPoint bridge = new BridgeEntryPoint();
        BridgeException e = assertThrows(BridgeException.class, () -> bridge.runExperiment(exp.experiment.toString()));
        assertEquals(BridgeException.Kind.BAD_TOPOLOGY, e.getKind(), e.getMessage());
        assertTrue(e.getMessage().contains(exp.topology.toString()), e.getMessage());
        assertEquals(BridgeEntryPoint.FAILED, bridge.getState());
    }

    @Test
    void workloadSchemaMismatchIsNamed(@TempDir Path tmp) throws Exception {
        assumeTrue(openDC(), "OpenDC is not on the class path (lite build)");
        TinyExperiment exp = new TinyExperiment(tmp).writeAll();
        exp.writeWorkload(true);
        BridgeEntryPoint bridge = new BridgeEntryPoint();
        BridgeException e = assertThrows(BridgeException.class, () -> bridge.runExperiment(exp.experiment.toString()));
        assertEquals(BridgeException.Kind.BAD_WORKLOAD, e.getKind(), e.getMessage());
        assertTrue(e.getMessage().contains(exp.workload.toString()), e.getMessage());
    }

    @Test
    void openDCPresenceMatchesTheBuildFlavour(@TempDir Path tmp) throws Exception {
        // The full jar must carry OpenDC (no silent lite build); the lite jar must say that OpenDC is missing.
        if (!"lite".equals(System.getProperty("kavier.bridge.flavour"))) {
            assertTrue(openDC(), "the full bridge build has no OpenDC on its class path");
            // JVM classes of OpenDC's multiplatform dependencies: a POM naming only a root artifact
            // (e.g. 'kotlin-logging') leaves them out and OpenDC dies with NoClassDefFoundError.
            for (String cls : List.of("mu.KotlinLogging", "com.github.ajalt.clikt.core.CliktCommand",
                    "kotlinx.coroutines.CoroutineScope", "kotlinx.serialization.json.Json")) {
                assertDoesNotThrow(() -> Class.forName(cls), cls + " is missing from the bridge jar");
            }
            return;
        }
        assertFalse(openDC(), "the lite bridge build has OpenDC on its class path");
        TinyExperiment exp = new TinyExperiment(tmp).writeAll();
        BridgeEntryPoint bridge = new BridgeEntryPoint();
        BridgeException e = assertThrows(BridgeException.class, () -> bridge.runExperiment(exp.experiment.toString()));
        assertEquals(BridgeException.Kind.OPENDC_MISSING, e.getKind(), e.getMessage());
        assertEquals(BridgeEntryPoint.FAILED, bridge.getState());
    }

    @Test
    void missingClassIsAnInstallationFailureNotBadInput() {
        Throwable missing = new IllegalStateException("init",
                new NoClassDefFoundError("mu/KotlinLogging"));
        BridgeException loading = OpenDCErrors.whileLoading("/x/experiment.json", missing);
        assertEquals(BridgeException.Kind.OPENDC_INSTALLATION, loading.getKind(), loading.getMessage());
        assertTrue(loading.getMessage().contains("mu/KotlinLogging"), loading.getMessage());
        assertTrue(loading.getMessage().contains("not a problem with your input"), loading.getMessage());
        assertTrue(OpenDCErrors.isInstallationFailure(new ClassNotFoundException("org.opendc.X")));
        assertFalse(OpenDCErrors.isInstallationFailure(new RuntimeException("Unexpected JSON token")));
    }

    @Test
    void classifiesByWhereOpenDCFailed() {
        RuntimeException topology = new RuntimeException("Unexpected JSON token at offset 12");
        topology.setStackTrace(new StackTraceElement[] {
            new StackTraceElement("org.opendc.compute.topology.TopologyReader", "read", "TopologyReader.kt", 40)
        });
        assertEquals(BridgeException.Kind.BAD_TOPOLOGY, OpenDCErrors.classify(topology));

        RuntimeException parquet = new RuntimeException(
                "The requested schema is not compatible with the file schema. incompatible types: "
                        + "required int32 id != required int64 id");
        parquet.setStackTrace(new StackTraceElement[] {
            new StackTraceElement("org.apache.parquet.io.ColumnIOFactory", "visit", "ColumnIOFactory.java", 100)
        });
        assertEquals(BridgeException.Kind.BAD_WORKLOAD,
                OpenDCErrors.classify(new IllegalStateException("wrapper", parquet)));

        RuntimeException other = new RuntimeException("boom");
        other.setStackTrace(new StackTraceElement[] {
            new StackTraceElement("org.opendc.simulator.engine.FlowDistributor", "x", "FlowDistributor.java", 1)
        });
        assertEquals(BridgeException.Kind.OPENDC_FAILURE, OpenDCErrors.classify(other));
    }

    private static void assertColumn(MessageType schema, String name, PrimitiveTypeName type, Type.Repetition rep) {
        Type column = schema.getType(name);
        assertTrue(column.isPrimitive(), name);
        assertEquals(type, column.asPrimitiveType().getPrimitiveTypeName(), name);
        assertEquals(rep, column.getRepetition(), name);
    }
}
