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
