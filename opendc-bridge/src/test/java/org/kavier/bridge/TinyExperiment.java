package org.kavier.bridge;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.simple.SimpleGroupFactory;
import org.apache.parquet.hadoop.ParquetWriter;
import org.apache.parquet.hadoop.example.ExampleParquetWriter;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.MessageTypeParser;

/**
 * Writes a tiny OpenDC experiment: one host with one GPU and two tasks that run from time 0 for
 * {@link #DURATION_MS}: task 0 keeps the GPU at {@link #GPU_UTILIZATION}, task 1 only uses the CPU.
 * The CPU draws 0 W, the GPU follows a linear model from {@link #GPU_IDLE_W} to {@link #GPU_MAX_W}, so the
 * host's energy is (idle + (max - idle) * u) * T.
 */
final class TinyExperiment {
    static final long DURATION_MS = 3_600_000L;
    static final double GPU_SPEED_MHZ = 1000.0;
    static final double GPU_UTILIZATION = 0.6;
    static final double GPU_IDLE_W = 100.0;
    static final double GPU_MAX_W = 400.0;
    static final long EXPORT_INTERVAL_S = 60;
    /** 2022-01-01T00:00:00Z in epoch milliseconds. */
    static final long SUBMISSION_EPOCH_MS = 1_640_995_200_000L;

    /** OpenDC's tasks.parquet columns that the tiny workload uses (physical types and nullability). */
    static final MessageType TASKS_SCHEMA = MessageTypeParser.parseMessageType(
            "message resource {\n"
                    + "  required int32 id;\n"
                    + "  required int64 submission_time (TIMESTAMP(MILLIS,true));\n"
                    + "  required int64 duration;\n"
                    + "  required int32 cpu_count;\n"
                    + "  required double cpu_capacity;\n"
                    + "  required int64 mem_capacity;\n"
                    + "  optional int32 gpu_count;\n"
                    + "  optional double gpu_capacity;\n"
                    + "}");

    static final MessageType FRAGMENTS_SCHEMA = MessageTypeParser.parseMessageType(
            "message resource_state {\n"
                    + "  required int32 id;\n"
                    + "  required int64 duration;\n"
                    + "  required double cpu_usage;\n"
                    + "  optional double gpu_usage;\n"
                    + "}");

    /** A tasks.parquet whose id is INT64: OpenDC must refuse it ("incompatible types"). */
    static final MessageType BAD_TASKS_SCHEMA = MessageTypeParser.parseMessageType(
            "message resource {\n"
                    + "  required int64 id;\n"
                    + "  required int64 submission_time;\n"
                    + "  required int64 duration;\n"
                    + "  required int32 cpu_count;\n"
                    + "  required double cpu_capacity;\n"
                    + "  required int64 mem_capacity;\n"
                    + "}");

    final Path root;
    final Path workload;
    final Path topology;
    final Path experiment;
    final Path output;

    TinyExperiment(Path root) {
        this.root = root;
        this.workload = root.resolve("workload");
        this.topology = root.resolve("topology.json");
        this.experiment = root.resolve("experiment.json");
        this.output = root.resolve("output");
    }

    TinyExperiment writeAll() throws IOException {
        writeWorkload(false);
        writeTopology(topologyJson());
        writeExperiment();
        return this;
    }

    void writeWorkload(boolean badTaskIds) throws IOException {
        Files.createDirectories(workload);
        Path tasks = workload.resolve("tasks.parquet");
        Path fragments = workload.resolve("fragments.parquet");
        Files.deleteIfExists(tasks);
        Files.deleteIfExists(fragments);

        MessageType taskSchema = badTaskIds ? BAD_TASKS_SCHEMA : TASKS_SCHEMA;
        SimpleGroupFactory taskRows = new SimpleGroupFactory(taskSchema);
        try (ParquetWriter<Group> writer = ExampleParquetWriter.builder(LocalParquet.output(tasks))
                .withType(taskSchema).build()) {
            for (int id = 0; id < 2; id++) {
                Group row = taskRows.newGroup();
                if (badTaskIds) {
                    row.add("id", (long) id);
                } else {
                    row.add("id", id);
                }
                row.add("submission_time", SUBMISSION_EPOCH_MS);
                row.add("duration", DURATION_MS);
                row.add("cpu_count", 1);
                row.add("cpu_capacity", 1000.0);
                row.add("mem_capacity", 1_000_000L); // KB
                if (!badTaskIds) {
                    row.add("gpu_count", id == 0 ? 1 : 0);
                    row.add("gpu_capacity", id == 0 ? GPU_SPEED_MHZ : 0.0);
                }
                writer.write(row);
            }
        }

        SimpleGroupFactory fragmentRows = new SimpleGroupFactory(FRAGMENTS_SCHEMA);
        try (ParquetWriter<Group> writer = ExampleParquetWriter.builder(LocalParquet.output(fragments))
                .withType(FRAGMENTS_SCHEMA).build()) {
            Group gpuTask = fragmentRows.newGroup();
            gpuTask.add("id", 0);
            gpuTask.add("duration", DURATION_MS);
            gpuTask.add("cpu_usage", 100.0);
            gpuTask.add("gpu_usage", GPU_UTILIZATION * GPU_SPEED_MHZ);
            writer.write(gpuTask);
            Group cpuTask = fragmentRows.newGroup();
            cpuTask.add("id", 1);
            cpuTask.add("duration", DURATION_MS);
            cpuTask.add("cpu_usage", 500.0);
            cpuTask.add("gpu_usage", 0.0);
            writer.write(cpuTask);
        }
    }

    static String topologyJson() {
        return "{\"clusters\": [{\"name\": \"C01\", \"hosts\": [{\n"
                + "  \"name\": \"H01\", \"count\": 1,\n"
                + "  \"cpu\": {\"coreCount\": 4, \"coreSpeed\": \"1000 MHz\"},\n"
                + "  \"memory\": {\"memorySize\": \"64 GiB\"},\n"
                + "  \"gpu\": {\"count\": 1, \"coreCount\": 1, \"coreSpeed\": \"" + (long) GPU_SPEED_MHZ + " MHz\"},\n"
                + "  \"cpuPowerModel\": {\"modelType\": \"linear\", \"idlePower\": \"0 W\", \"maxPower\": \"0 W\"},\n"
                + "  \"gpuPowerModel\": {\"modelType\": \"linear\", \"idlePower\": \"" + (long) GPU_IDLE_W + " W\", "
                + "\"maxPower\": \"" + (long) GPU_MAX_W + " W\"}\n"
                + "}], \"powerSource\": {\"name\": \"PS01\"}}]}\n";
    }

    void writeTopology(String json) throws IOException {
        Files.writeString(topology, json, StandardCharsets.UTF_8);
    }

    void writeExperiment() throws IOException {
        String json = "{\n"
                + "  \"name\": \"tiny\",\n"
                + "  \"outputFolder\": " + quote(output.toString()) + ",\n"
                + "  \"topologies\": [{\"pathToFile\": " + quote(topology.toString()) + "}],\n"
                + "  \"workloads\": [{\"pathToFile\": " + quote(workload.toString()) + ", \"type\": \"ComputeWorkload\","
                + " \"submissionTime\": \"2022-01-01T00:00:00\"}],\n"
                + "  \"allocationPolicies\": [{\"type\": \"prefab\", \"policyName\": \"Mem\"}],\n"
                + "  \"exportModels\": [{\"exportInterval\": " + EXPORT_INTERVAL_S + "}]\n"
                + "}\n";
        Files.writeString(experiment, json, StandardCharsets.UTF_8);
    }

    static double expectedEnergyJoules() {
        return (GPU_IDLE_W + (GPU_MAX_W - GPU_IDLE_W) * GPU_UTILIZATION) * DURATION_MS / 1000.0;
    }

    private static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }
}
