"""Result files follow the umask like any Unix tool's output (issue 17, item 4): temporary files are
private while written, what lands in --out is readable as the umask allows."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kavier_opendc.base.atomic import atomic_write_text, current_umask, write_json_atomic
from kavier_opendc.base.errors import KavierRuntimeError
from kavier_opendc.experiments.executor import unpack_run

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "demo_chat.csv"


def cli_with_umask(mask: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(mask),
    )


def modes(folder: Path) -> dict[str, tuple[bool, int]]:
    return {str(p.relative_to(folder)): (p.is_dir(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_simulate_outputs_follow_the_umask(tmp_path, mask):
    out = tmp_path / "sim"
    r = cli_with_umask(
        mask, "simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", TRACE, "--quiet", "--out", out
    )
    assert r.returncode == 0, r.stderr
    found = modes(out)
    assert set(found) == {"requests.parquet", "timeline.parquet", "summary.json"}
    assert all(m == 0o666 & ~mask for _, m in found.values()), found


def test_a_run_folder_with_plots_follows_the_umask(tmp_path):
    from test_pipeline import tiny_experiment

    out = tmp_path / "run"
    r = cli_with_umask(0o022, "run", tiny_experiment(tmp_path), "--out", out, "--no-opendc", "--quiet")
    assert r.returncode == 0, r.stderr
    found = modes(out)
    assert any(name.endswith(".png") for name in found) and "report.json" in found
    for name, (is_dir, mode) in found.items():
        assert mode == (0o755 if is_dir else 0o644), (name, oct(mode))


def test_atomic_writers_and_an_unpacked_remote_run_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        atomic_write_text(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "b.json", {"k": 1})
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            data = b"{}"
            info = tarfile.TarInfo("report.json")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        unpack_run(buf.getvalue(), tmp_path / "run-0")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "run-0").stat().st_mode) == 0o750  # was mkdtemp's 0700


def _tar(*members: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"{}") if m.isfile() else None)
    return buf.getvalue()


@pytest.mark.parametrize("with_data_filter", [True, False])
def test_an_unpacked_remote_run_holds_plain_files_only(tmp_path, monkeypatch, with_data_filter):
    """Python 3.11.0-3.11.3 (Debian bookworm's 3.11.2, the container's stand-in base) have no tarfile
    "data" filter: the same archives are unpacked and the same ones refused without it."""
    if not with_data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    d, f = tarfile.TarInfo("simulation"), tarfile.TarInfo("simulation/summary.json")
    d.type, f.size = tarfile.DIRTYPE, 2
    unpack_run(_tar(d, f), tmp_path / "ok")
    assert (tmp_path / "ok" / "simulation" / "summary.json").read_bytes() == b"{}"
    link = tarfile.TarInfo("escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    outside = tarfile.TarInfo("../outside.json")
    outside.size = 2
    for bad in (link, outside):
        with pytest.raises(KavierRuntimeError, match=f"holds '{re.escape(bad.name)}', which is not a plain file"):
            unpack_run(_tar(bad), tmp_path / "bad")
        assert not (tmp_path / "bad").exists() and not (tmp_path / "outside.json").exists()
