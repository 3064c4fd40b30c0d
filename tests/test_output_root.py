"""The output root a command declares (kavier_opendc/base/atomic.py, issue 17): below it the writers make
folders only while it is still the folder it was, so a folder removed mid-command is never re-created with a
half set of results; under no root they make folders as before (the library used directly)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile

import pytest

from kavier_opendc.base.atomic import (
    atomic_write_text,
    check_output_root,
    make_dirs,
    output_root,
    staged_output,
    write_json_atomic,
)
from kavier_opendc.base.errors import OutputWriteError
from kavier_opendc.experiments.executor import unpack_run

GONE = (
    ": No such file or directory (ENOENT): its folder was removed or moved while the command was writing into it; "
    "the command stopped, and no half-written file was left in place (expected the output folder to stay in place "
    "until the command ends)"
)


def _archive(name: str = "report.json", data: bytes = b"{}") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_below_a_root_folders_are_made_while_it_is_there(tmp_path):
    out = tmp_path / "sweep"
    with output_root(out) as root:
        assert root == out and out.is_dir()  # made by the declaration
        atomic_write_text(out / "runs" / "r1" / "simulation" / "summary.json", "{}")
        make_dirs(out / "runs" / "r2")
        make_dirs(out / "runs" / "r2")  # already there: nothing to do
    assert (out / "runs" / "r1" / "simulation" / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["r1", "r2"]


def test_a_removed_root_is_not_recreated_by_any_writer(tmp_path):
    out = tmp_path / "sweep"
    with output_root(out):
        make_dirs(out / "runs" / "r1")
        shutil.rmtree(out)  # another process removes it mid-command
        writers = [
            lambda: atomic_write_text(out / "runs" / "r1" / "report.md", "x"),
            lambda: write_json_atomic(out / "sweep.json", {"complete": False}),
            lambda: make_dirs(out / "runs" / "r2" / "plots"),
            lambda: unpack_run(_archive(), out / "runs" / "r3"),  # a shipped run arriving at the driver
            lambda: check_output_root(out / "runs"),
        ]
        for write in writers:
            with pytest.raises(OutputWriteError) as e:
                write()
            assert str(e.value) == f"{out}{GONE}"
            assert e.value.errno == errno.ENOENT
            assert not out.exists() and sorted(os.listdir(tmp_path)) == []


def test_a_staged_folder_whose_root_goes_is_not_moved_into_a_new_one(tmp_path):
    out = tmp_path / "run"
    with output_root(out), pytest.raises(OutputWriteError) as e:
        with staged_output(out / "simulation") as stage:
            (stage / "requests.parquet").write_bytes(b"x")
            shutil.rmtree(out)
    assert str(e.value) == f"{out}{GONE}"
    assert not out.exists()


def test_a_root_removed_and_made_again_by_another_is_not_written_into(tmp_path):
    out = tmp_path / "run"
    other = tmp_path / "other"
    other.mkdir()  # (made while the root exists: another inode than the root's, never a reused one)
    with output_root(out):
        shutil.rmtree(out)
        other.rename(out)  # someone else's folder now, by the same name
        with pytest.raises(OutputWriteError, match="its folder was removed or moved"):
            atomic_write_text(out / "report.json", "{}")
    assert list(out.iterdir()) == []


def test_nested_roots_name_the_outermost_folder_removed(tmp_path):
    """A sweep's worker holds runs/ and its run's folder; the user removed the whole sweep folder."""
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    with output_root(sweep / "runs", create=False), output_root(sweep / "runs" / "r1"):
        shutil.rmtree(sweep)
        with pytest.raises(OutputWriteError) as e:
            atomic_write_text(sweep / "runs" / "r1" / "simulation" / "timeline.parquet", "x")
    assert str(e.value) == f"{sweep}{GONE}"
    assert not sweep.exists()


def test_a_missing_root_is_refused_when_it_is_not_to_be_made(tmp_path):
    with pytest.raises(OutputWriteError) as e, output_root(tmp_path / "sweep" / "runs", create=False):
        pass
    assert str(e.value) == f"{tmp_path / 'sweep'}{GONE}"


def test_a_root_named_through_a_symbolic_link_guards_its_real_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with output_root(link):
        make_dirs(real / "a")  # the same folder named by its resolved path
        shutil.rmtree(real)
        with pytest.raises(OutputWriteError):
            atomic_write_text(real / "a" / "b.txt", "x")
    assert not real.exists()


def test_without_a_root_writers_make_folders_as_before(tmp_path):
    atomic_write_text(tmp_path / "a" / "b" / "c.txt", "x")
    unpack_run(_archive(), tmp_path / "runs" / "r0")  # the driver's runs/ folder made for it
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"
    assert (tmp_path / "runs" / "r0" / "report.json").read_bytes() == b"{}"


def test_a_root_is_released_when_its_block_ends(tmp_path):
    out = tmp_path / "run"
    with output_root(out):
        pass
    shutil.rmtree(out)
    atomic_write_text(out / "x.txt", "x")  # no longer this command's: made as under no root
    assert (out / "x.txt").is_file()
