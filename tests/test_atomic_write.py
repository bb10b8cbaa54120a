"""atomic_write: the state file and the metrics textfile are replaced whole, with their
mode, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mor_plugin import textfile
from mor_plugin.atomic import atomic_write


def test_atomic_write_replaces_the_file_whole_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "mor_regstatus.prom"
    old_umask = os.umask(0o077)
    try:
        atomic_write(path, "first\n")
        atomic_write(path, "second\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "second\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_atomic_write_leaves_nothing_behind_when_it_fails(tmp_path: Path) -> None:
    taken = tmp_path / "state.json"
    taken.mkdir()  # a folder where the file should be: os.replace fails
    (taken / "keep").write_text("x")
    with pytest.raises(OSError):
        atomic_write(taken, "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert (taken / "keep").read_text() == "x"


def test_the_temporary_file_is_never_taken_for_a_textfile(tmp_path: Path) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: Path) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", spy)
        atomic_write(tmp_path / textfile.FILENAME, "x\n")
    [name] = seen
    assert name.startswith(".") and name.endswith(".tmp")  # node_exporter reads *.prom
