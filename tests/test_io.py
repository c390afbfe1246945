"""Atomic writes: all or nothing, and files a user can read like any other."""
from __future__ import annotations

import os
import stat

import pytest

from resnetkit._io import append_jsonl, write_atomic, write_json_atomic


def test_written_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_a_writer_that_recreates_the_file_still_gets_the_umask_mode(tmp_path):
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        def recreate(path):  # what a library may do: remove the file and create a private one
            path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)

        write_atomic(tmp_path / "a.bin", recreate)
        write_atomic(tmp_path / "w.safetensors", lambda p: save_file({"w": torch.zeros(2)}, str(p)))
    finally:
        os.umask(old)
    for name in ("a.bin", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    write_json_atomic(target, {"v": 1})

    def boom(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, boom)
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_append_jsonl_adds_lines(tmp_path):
    for i in range(3):
        append_jsonl(tmp_path / "x.jsonl", {"i": i})
    assert (tmp_path / "x.jsonl").read_text().splitlines() == ['{"i": 0}', '{"i": 1}', '{"i": 2}']
