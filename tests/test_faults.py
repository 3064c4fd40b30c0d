"""Faults at run time (issue 17): real `kavier` processes, real signals, then the folder and a rerun.

- one command per output folder: a second one into the same --out fails at once (exit 2, the holder's pid),
  touches nothing, and the first one finishes whole; the lock goes with its process, SIGKILL included;
- SIGINT, SIGTERM and SIGKILL at several moments of `kavier run` (OpenDC off and on) and of `kavier sweep`:
  one line and exit 130/143 (no traceback), a folder that is INCOMPLETE or whole, no process left behind,
  and the same command run again succeeds (a killed sweep resumes without redoing its finished runs);
- a resumed sweep verifies each finished run's files: a DONE run with a cut-short report.json runs again;
- --overwrite never loses the earlier complete run: a replacement that is interrupted or killed leaves it
  (or, after SIGKILL, the next command puts it back).

Every wait polls for a stage line, a file or a process, with generous timeouts (2 shared cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kavier_opendc.base.atomic import INCOMPLETE
from kavier_opendc.base.output_folder import earlier_path, lock_path, output_lock
from kavier_opendc.experiments.demo import DEMO_EXPERIMENT, DEMO_WORKLOAD
from kavier_opendc.experiments.run_folder import DONE, run_done_problem

WAIT = 300.0  # seconds any one stage may take on a loaded machine
CLI = [sys.executable, "-m", "kavier_opendc.cli"]


# ------------------------------------------------------------------------------ processes


#: every command a test started, newest last: the reaper ends those still there when the test ends
_started: list["Cmd"] = []


class Cmd:
    """A `kavier` command started in its own process group; stderr collected line by line as it comes."""

    def __init__(self, *args, cwd: Path | None = None, env: dict[str, str] | None = None):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(
            CLI + self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
        )
        self.pgid = self.proc.pid
        _started.append(self)
        self.err: list[str] = []
        self.out = ""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self._o = threading.Thread(target=self._read_out, daemon=True)
        self._o.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def _read_out(self) -> None:
        self.out = self.proc.stdout.read()

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_stage(self, text: str, timeout: float = WAIT) -> None:
        wait_for(
            lambda: any(text in line for line in self.err) or self.proc.poll() is not None,
            timeout,
            f"stage {text!r} of {self.args}",
        )
        assert self.proc.poll() is None, f"{self.args} ended before {text!r}: {self.stderr}"

    def kill(self, sig: int) -> int:
        os.kill(self.proc.pid, sig)
        return self.wait()

    def wait(self, timeout: float = WAIT) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=30)
        self._o.join(timeout=30)
        return rc


def reap(cmd: Cmd, timeout: float = 30.0) -> list[int]:
    """SIGKILL whatever is left of ``cmd``: its process group (stopped members too: SIGKILL needs no SIGCONT)
    and its descendants outside the group (the JVM runs in a session of its own), again until none is left
    (a nanny may start a worker meanwhile); the pids killed."""
    killed: list[int] = []
    known: dict[int, str] = {}  # every descendant seen: still ours once its parent is gone
    end = time.monotonic() + timeout
    while True:
        procs = _processes()
        known.update(descendants(cmd.proc.pid))
        targets = {pid for pid, (_, g, _) in procs.items() if g == cmd.pgid}
        targets |= {pid for pid, c in known.items() if pid in procs and procs[pid][2] == c}
        if not targets or time.monotonic() > end:
            break
        for pid in sorted(targets):
            try:
                os.kill(pid, signal.SIGKILL)
                if pid not in killed:
                    killed.append(pid)
            except OSError:  # gone meanwhile
                pass
        time.sleep(0.1)
    try:
        cmd.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    return killed


@pytest.fixture(autouse=True)
def reap_commands():
    """After each test (passed or failed), no command it started is left running or stopped (SIGSTOP by
    the test hook) with its Dask workers or JVM: a failed assertion never leaves them to the next test."""
    first = len(_started)
    yield
    while len(_started) > first:
        reap(_started.pop())


def wait_for(cond, timeout: float = WAIT, what: str = "a condition", every: float = 0.1) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live process (zombies left out): pid -> (parent pid, process group, command line)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            line = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(d.name)] = (int(fields[1]), int(fields[2]), line[:200])
        except (OSError, ValueError, IndexError):
            continue
    return found


def group_processes(pgid: int) -> list[str]:
    """The live processes of process group ``pgid``, as 'pid cmdline'."""
    return [f"{pid} {cmd}" for pid, (_, g, cmd) in _processes().items() if g == pgid]


def descendants(root: int) -> dict[int, str]:
    """The live descendants of ``root`` (the JVM runs in a session of its own: not in the group)."""
    procs = _processes()
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, cmd) in procs.items():
            if ppid == parent and pid not in out:
                out[pid] = cmd
                todo.append(pid)
    return out


def kill_recorded(cmd: "Cmd", sig: int) -> tuple[int, dict[int, str]]:
    """Send ``sig`` to the command; returns its exit status and the descendants it had just before."""
    children = descendants(cmd.proc.pid)
    return cmd.kill(sig), children


def assert_nothing_left(cmd: Cmd, children: dict[int, str] | None = None, timeout: float = 90.0) -> None:
    """No process of the killed command's group, nor any it had started, outlives it for long."""
    left: list[str] = []

    def gone() -> bool:
        procs = _processes()
        left[:] = [f"{pid} {c}" for pid, (_, g, c) in procs.items() if g == cmd.pgid]
        left.extend(f"{pid} {c}" for pid, c in (children or {}).items() if pid in procs and procs[pid][2] == c)
        return not left

    try:
        wait_for(gone, timeout, "the command's processes to end", every=0.5)
    except AssertionError:
        for line in left:
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)  # our own leftovers: never leave them running
            except OSError:
                pass
        raise AssertionError(f"processes left behind by {cmd.args}: {left}") from None


def cli(*args, timeout: float = 2 * WAIT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def assert_one_paragraph_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kavier: error: "), stderr


def assert_interrupted(cmd: Cmd, rc: int, sig: int) -> None:
    assert "Traceback" not in cmd.stderr, cmd.stderr
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        return
    assert rc == 128 + sig, (rc, cmd.stderr)
    assert cmd.err[-1].strip() == f"kavier: interrupted ({signal.Signals(sig).name})", cmd.stderr


def assert_whole_or_incomplete(out: Path) -> None:
    """A killed run's folder: absent, INCOMPLETE (and then no complete-looking report), or complete."""
    if not out.exists():
        return
    if (out / INCOMPLETE).exists():
        return
    assert (out / "report.json").is_file(), f"{out} is neither INCOMPLETE nor complete: {os.listdir(out)}"
    json.loads((out / "report.json").read_text())
    for f in ("requests.parquet", "timeline.parquet", "summary.json"):
        assert (out / "simulation" / f).is_file()


def assert_complete_run(out: Path) -> None:
    assert not (out / INCOMPLETE).exists(), (out / INCOMPLETE).read_text()
    rep = json.loads((out / "report.json").read_text())
    assert {"performance", "efficiency", "provenance"} <= set(rep)
    for f in ("requests.parquet", "timeline.parquet", "summary.json"):
        assert (out / "simulation" / f).stat().st_size > 0


# ------------------------------------------------------------------------------ inputs


def demo_copy(tmp: Path, requests: int = 3000, **serving) -> Path:
    """The demo experiment with ``requests`` requests (and ``serving`` changes) in ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(DEMO_EXPERIMENT.read_text())
    doc["serving"].update(serving)
    work = yaml.safe_load(DEMO_WORKLOAD.read_text())
    work["num_requests"] = requests
    (tmp / "demo_workload.yaml").write_text(yaml.safe_dump(work))
    p = tmp / "experiment.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


# ------------------------------------------------------------------------------ 1. one lock per folder


def test_a_second_run_into_the_same_folder_fails_at_once_and_the_first_finishes_whole(tmp_path):
    exp = demo_copy(tmp_path / "in", requests=6000)
    out = tmp_path / "out"
    first = Cmd("run", exp, "--out", out, "--no-opendc")
    first.wait_stage("simulate")
    assert lock_path(out).is_file()
    # the first run is paused while the second tries (it keeps its lock): on a loaded machine the second's
    # start-up alone could outlast the whole first run, and the test would then prove nothing
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        second = cli("run", exp, "--out", out, "--no-opendc", "--overwrite")
        still_running = first.proc.poll() is None
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert_one_paragraph_error(second.stderr)
    assert f"output folder {out.resolve()} is in use by another kavier command (pid {first.proc.pid}: " in second.stderr
    assert "nothing was changed" in second.stderr
    assert first.wait() == 0, first.stderr
    assert still_running, "the first run ended before the second was refused: the test proved nothing"
    assert_complete_run(out)
    assert not lock_path(out).exists() and not earlier_path(out).exists()


@pytest.mark.parametrize("command", ["run", "demo", "simulate", "sweep", "plan"])
def test_every_command_writing_an_out_folder_refuses_a_locked_one(tmp_path, command):
    exp = demo_copy(tmp_path / "in", requests=50)
    sweep = tmp_path / "in" / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": "experiment.yaml", "axes": {"serving.replicas": [1, 2]}}))
    out = tmp_path / "out"
    args = {
        "run": ["run", exp, "--no-opendc"],
        "demo": ["demo", "--no-opendc"],
        "simulate": [
            "simulate",
            "--model",
            "Llama-3-8B",
            "--gpu",
            "A100-80GB",
            "--trace",
            tmp_path / "in" / "demo_workload.yaml",
        ],
        "sweep": ["sweep", sweep, "--no-opendc"],
        "plan": ["plan", "--example", "--no-opendc"],
    }[command]
    with output_lock(out, command="the test holding the lock"):
        r = cli(*args, "--out", out, timeout=WAIT)
    assert r.returncode == 2, r.stderr
    assert_one_paragraph_error(r.stderr)
    assert f"{out} is in use by another kavier command (pid {os.getpid()}: the test holding the lock" in r.stderr
    assert not out.exists()  # touched nothing
    assert not lock_path(out).exists()  # the holder removed its lock file as it ended


# ------------------------------------------------------------------------------ 2. kills, then rerun

MOMENTS_OFF = {"at 0.5 s": None, "simulate": "[2/3] simulate", "report": "[3/3] report"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
@pytest.mark.parametrize("moment", list(MOMENTS_OFF))
def test_a_killed_run_without_opendc_is_incomplete_and_reruns(tmp_path, sig, moment):
    exp = demo_copy(tmp_path / "in", requests=3000)
    out = tmp_path / "out"
    cmd = Cmd("run", exp, "--out", out, "--no-opendc")
    if MOMENTS_OFF[moment] is None:
        time.sleep(0.5)
    else:
        cmd.wait_stage(MOMENTS_OFF[moment])
    rc, children = kill_recorded(cmd, sig)
    assert_interrupted(cmd, rc, sig)
    assert_nothing_left(cmd, children)
    assert_whole_or_incomplete(out)
    if MOMENTS_OFF[moment] is not None:
        assert (out / INCOMPLETE).is_file() and not (out / "report.json").exists()
    again = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")  # no --overwrite needed
    assert again.returncode == 0, again.stderr
    assert_complete_run(out)
    assert not lock_path(out).exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_a_run_killed_during_opendc_leaves_no_jvm_and_reruns(tmp_path, sig):
    out = tmp_path / "out"
    cmd = Cmd("run", DEMO_EXPERIMENT, "--out", out, "--no-plots")
    cmd.wait_stage("[4/5] opendc")

    def jvm() -> bool:
        return (
            any("kavier-opendc-bridge" in c for c in descendants(cmd.proc.pid).values()) or cmd.proc.poll() is not None
        )

    wait_for(jvm, WAIT, "the bridge's JVM")
    time.sleep(0.5)
    rc, children = kill_recorded(cmd, sig)
    assert any("kavier-opendc-bridge" in c for c in children.values()), (children, cmd.stderr)
    assert_interrupted(cmd, rc, sig)
    assert_nothing_left(cmd, children)
    assert (out / INCOMPLETE).is_file() and not (out / "report.json").exists()
    if sig != signal.SIGKILL:
        assert "FAILED during stage 'opendc'" in (out / INCOMPLETE).read_text()
    again = cli("run", DEMO_EXPERIMENT, "--out", out, "--no-plots", "--quiet")
    assert again.returncode == 0, again.stderr
    assert_complete_run(out)
    assert json.loads((out / "report.json").read_text())["sustainability"]["energy_wh"] > 0


def _sweep_inputs(tmp: Path) -> Path:
    demo_copy(tmp, requests=1500)
    sweep = tmp / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump({"name": "faults", "base": "experiment.yaml", "axes": {"serving.replicas": [2, 3, 4]}})
    )
    return sweep


def _done_runs(out: Path) -> dict[str, str]:
    runs = out / "runs"
    return (
        {p.name: (p / DONE).read_text() for p in sorted(runs.iterdir()) if (p / DONE).is_file()}
        if runs.is_dir()
        else {}
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_a_killed_sweep_resumes_without_redoing_its_finished_runs(tmp_path, sig):
    sweep = _sweep_inputs(tmp_path / "in")
    out = tmp_path / "sweep"
    cmd = Cmd("sweep", sweep, "--out", out, "--no-opendc", "--jobs", "1")
    wait_for(lambda: len(_done_runs(out)) >= 1 or cmd.proc.poll() is not None, WAIT, "a finished run")
    rc, children = kill_recorded(cmd, sig)
    if rc != 0:
        assert_interrupted(cmd, rc, sig)
    assert_nothing_left(cmd, children)
    done = _done_runs(out)
    assert 1 <= len(done) < 3 or rc == 0, done
    if rc != 0:
        assert (out / INCOMPLETE).is_file() and not (out / "comparison.csv").exists()
    resumed = cli("sweep", sweep, "--out", out, "--no-opendc", "--jobs", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} already done, {3 - len(done)} to run" in resumed.stderr
    after = _done_runs(out)
    assert len(after) == 3 and all(after[k] == v for k, v in done.items())  # finished runs not redone
    assert not (out / INCOMPLETE).exists() and json.loads((out / "sweep.json").read_text())["complete"]


# ------------------------------------------------------------------------------ 3. a resume verifies files


def test_a_resumed_sweep_reruns_a_done_run_whose_files_are_cut_short(tmp_path):
    sweep = _sweep_inputs(tmp_path / "in")
    out = tmp_path / "sweep"
    first = cli("sweep", sweep, "--out", out, "--no-opendc", "--jobs", "2")
    assert first.returncode == 0, first.stderr
    done = _done_runs(out)
    names = sorted(done)
    assert len(names) == 3
    cut = out / "runs" / names[0] / "report.json"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # truncated, DONE kept
    gone = out / "runs" / names[1] / "simulation" / "requests.parquet"
    gone.unlink()
    resumed = cli("sweep", sweep, "--out", out, "--no-opendc", "--jobs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert f"note: run {names[0]} is marked DONE but its report.json is unreadable or cut short" in resumed.stderr
    assert f"note: run {names[1]} is marked DONE but its simulation/requests.parquet is missing" in resumed.stderr
    assert "1 already done, 2 to run" in resumed.stderr
    after = _done_runs(out)
    assert after[names[2]] == done[names[2]] and after[names[0]] != done[names[0]]
    for n in names:
        assert run_done_problem(out / "runs" / n, json.loads(after[n])["config_hash"]) is None


def test_run_done_problem_names_what_is_wrong(tmp_path):
    from kavier_opendc.experiments.run_folder import mark_done

    rd = tmp_path / "r"
    (rd / "simulation").mkdir(parents=True)
    mark_done(rd, "h")
    assert run_done_problem(rd, "h") == "report.json is missing"
    (rd / "report.json").write_text('{"performance": {}, "efficiency": {}, "provenance": {}}')
    assert run_done_problem(rd, "h") == "simulation/requests.parquet is missing"
    for f in ("requests", "timeline"):
        (rd / "simulation" / f"{f}.parquet").write_bytes(b"PAR1" + b"x" * 20 + b"PAR1")
    (rd / "simulation" / "summary.json").write_text("{}")
    assert run_done_problem(rd, "h") is None
    assert run_done_problem(rd, "other") == "another configuration"
    (rd / "simulation" / "timeline.parquet").write_bytes(b"PAR1" + b"x" * 20)
    assert run_done_problem(rd, "h") == "simulation/timeline.parquet is cut short (no Parquet footer)"
    (rd / "simulation" / "timeline.parquet").write_bytes(b"")
    assert run_done_problem(rd, "h") == "simulation/timeline.parquet is empty"


# ------------------------------------------------------------------------------ 4. replacing safely


def _complete_run(tmp: Path) -> tuple[Path, Path, bytes]:
    exp = demo_copy(tmp / "in", requests=3000)
    out = tmp / "out"
    r = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")
    assert r.returncode == 0, r.stderr
    (out / "notes.txt").write_text("mine")  # not kavier's: stays whatever happens
    return exp, out, (out / "report.json").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupted_overwrite_puts_the_earlier_run_back(tmp_path, sig):
    exp, out, report = _complete_run(tmp_path)
    cmd = Cmd("run", exp, "--out", out, "--no-opendc", "--overwrite")
    cmd.wait_stage("[2/3] simulate")
    assert earlier_path(out).is_dir() and (out / INCOMPLETE).is_file()
    rc = cmd.kill(sig)
    assert_interrupted(cmd, rc, sig)
    assert (out / "report.json").read_bytes() == report
    assert_complete_run(out)
    assert (out / "notes.txt").read_text() == "mine"
    assert not earlier_path(out).exists() and not lock_path(out).exists()


def test_a_killed_overwrite_keeps_the_earlier_run_and_the_next_command_puts_it_back(tmp_path):
    exp, out, report = _complete_run(tmp_path)
    cmd = Cmd("run", exp, "--out", out, "--no-opendc", "--overwrite")
    cmd.wait_stage("[2/3] simulate")
    assert cmd.kill(signal.SIGKILL) == -signal.SIGKILL
    assert_nothing_left(cmd)
    aside = earlier_path(out)
    assert (aside / "report.json").read_bytes() == report  # the earlier run, whole, beside
    assert (out / INCOMPLETE).is_file() and not (out / "report.json").exists()
    again = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")  # no --overwrite: kept
    assert again.returncode == 2
    assert again.stderr.startswith(
        f"kavier: note: the earlier complete result in {out}, moved aside to {aside} "
        "by a replacement that did not finish, was put back\n"
    )
    assert f"{out} already holds a complete run (report.json), which is kept" in again.stderr
    assert "Traceback" not in again.stderr
    assert (out / "report.json").read_bytes() == report and not aside.exists()
    assert_complete_run(out)
    assert (out / "notes.txt").read_text() == "mine"
    replaced = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "report.json").read_bytes() != report
    assert_complete_run(out)
    assert (out / "notes.txt").read_text() == "mine" and not aside.exists()


def test_a_killed_simulate_overwrite_never_loses_the_earlier_files(tmp_path):
    trace = demo_copy(tmp_path / "in", requests=3000).parent / "demo_workload.yaml"
    out = tmp_path / "sim"
    sim = ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", trace, "--out", out, "--quiet"]
    assert cli(*sim).returncode == 0

    def files() -> dict[str, str]:  # contents by hash: a failing comparison of the bytes takes pytest minutes
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}

    before = files()
    cmd = Cmd(*sim, "--overwrite", "--replicas", "2")
    time.sleep(1.0)
    rc = cmd.kill(signal.SIGTERM)
    # -15: the signal's default action, before the CLI set its handler (start-up on a loaded machine) or
    # after the run (exit); the files must then be as in the other cases: untouched, or the new run whole
    assert rc in (143, 0, -signal.SIGTERM), cmd.stderr
    assert "Traceback" not in cmd.stderr
    after = files()
    if rc != 0 and after != before:
        # the signal came after the new result was in place (a run of a second or so): the new run whole,
        # never a mix of the two
        assert sorted(after) == sorted(before)
        assert json.loads((out / "summary.json").read_text())["config"]["replicas"] == 2
        assert all(after[name] != before[name] for name in after), (before, after)
    assert not earlier_path(out).exists()


def test_replacing_puts_the_earlier_entries_back_on_any_failure_and_recovery_mends_a_cut_move(tmp_path):
    from kavier_opendc.base.output_folder import recover_replacement, replacing

    entries, files = ("report.json", "simulation", INCOMPLETE), ("report.json",)
    out = tmp_path / "out"
    (out / "simulation").mkdir(parents=True)
    (out / "simulation" / "a").write_text("old sim")
    (out / "report.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), replacing(out, entries, files, first="report.json") as replaced:
        assert replaced and not (out / "report.json").exists() and (out / INCOMPLETE).is_file()
        (out / "simulation").mkdir()
        (out / "simulation" / "a").write_text("new, partial")
        raise RuntimeError("the new run failed")
    assert (out / "report.json").read_text() == "old" and (out / "simulation" / "a").read_text() == "old sim"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.json", "simulation"]
    assert not earlier_path(out).exists()
    # a kill in the middle of the move aside (report.json moved, simulation not, no marker yet): all comes back
    aside = earlier_path(out)
    aside.mkdir()
    (out / "report.json").rename(aside / "report.json")
    assert "was put back" in recover_replacement(out, entries, files)
    assert (out / "report.json").read_text() == "old" and (out / "simulation" / "a").read_text() == "old sim"
    assert not aside.exists() and not (out / INCOMPLETE).exists()
    # a kill after the new result was complete but before the earlier one was removed: the new one stays
    with replacing(out, entries, files) as replaced:
        (out / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "new" and not aside.exists()
    aside.mkdir()
    (aside / "report.json").write_text("old")
    assert recover_replacement(out, entries, files) is None
    assert (out / "report.json").read_text() == "new" and not aside.exists()
