"""Atomic writes: the old file or the new one, never half of one, with the permissions any file of the user gets;
paths joined from user strings stay under their root."""

import os

import pytest

from harness.io import atomic_write, atomic_write_text, under


def test_a_file_gets_the_process_umask_and_the_umask_is_left_alone(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
        assert os.umask(0o027) == 0o027  # writing did not change it
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old")

    def half(f):
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_under_joins_paths_below_the_root_and_refuses_the_rest(tmp_path):
    assert under(tmp_path, "smoke", "table.md") == tmp_path / "smoke" / "table.md"
    assert under(tmp_path, "a/../b.png") == tmp_path / "a/../b.png"  # as written: it stays below
    assert under(tmp_path) == tmp_path
    for parts in (("../escaped",), ("/etc",), ("smoke", "../../../figescape.png"), (str(tmp_path.parent),)):
        with pytest.raises(ValueError, match="outside"):
            under(tmp_path, *parts)
    (tmp_path / "out").symlink_to(tmp_path.parent)  # a link inside the root that leads out of it
    with pytest.raises(ValueError, match="outside"):
        under(tmp_path, "out", "x")
