package org.kavier.bridge;

/**
 * A failure the Python side can show to a user as is.
 *
 * <p>The message always starts with {@code [KIND]} (one of {@link Kind}) followed by one paragraph that names
 * the file involved, what OpenDC said, and what to check. Py4J hands the message to Python unchanged.
 */
public final class BridgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** What went wrong, coarsely; the Python side maps these to its own error types. */
    public enum Kind {
        /** The experiment JSON path does not exist or is not a readable file. */
        EXPERIMENT_NOT_FOUND,
        /** OpenDC rejected the experiment JSON (syntax, unknown key, missing field, bad value, missing path). */
        BAD_EXPERIMENT,
        /** OpenDC rejected a topology JSON file. */
        BAD_TOPOLOGY,
        /** The workload directory is missing files or its Parquet schema does not match OpenDC's. */
        BAD_WORKLOAD,
        /** A carbon trace could not be read. */
        BAD_CARBON_TRACE,
        /** The jar was built without OpenDC (lite build) or OpenDC's entry points are missing. */
        OPENDC_MISSING,
        /**
         * OpenDC's installation is broken: a class or method it needs is missing or incompatible at run time
         * (NoClassDefFoundError, ClassNotFoundException, NoSuchMethodError, ...). Not the user's input.
         */
        OPENDC_INSTALLATION,
        /** OpenDC failed while simulating for another reason. */
        OPENDC_FAILURE,
        /** Another experiment is still running in this JVM. */
        BUSY,
        /** A bridge call was made in the wrong state (e.g. asking for a result before a run finished). */
        BAD_STATE
    }

    private final Kind kind;
    private final String detail;

    public BridgeException(Kind kind, String message) {
        super("[" + kind.name() + "] " + message);
        this.kind = kind;
        this.detail = message;
    }

    public BridgeException(Kind kind, String message, Throwable cause) {
        super("[" + kind.name() + "] " + message, cause);
        this.kind = kind;
        this.detail = message;
    }

    /** The message without the {@code [KIND]} prefix. */
    public String getDetail() {
        return detail;
    }

    public Kind getKind() {
        return kind;
    }

    /** The kind as a string, convenient from Python. */
    public String getKindName() {
        return kind.name();
    }
}
