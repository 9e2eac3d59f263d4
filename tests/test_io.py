"""Atomic writes: all or nothing, and ordinary permissions."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from robustmix._io import append_jsonl, atomic_write, read_json, write_json


def test_write_json_round_trip_and_permissions(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"a": 1, "b": [1.5, None]})
    assert read_json(path) == {"a": 1, "b": [1.5, None]}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = write_json(tmp_path / "r.json", {"old": True})

    def explode(f):
        f.write(b'{"new": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, explode)
    assert read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_sigkill_mid_write_keeps_old_file_and_next_write_sweeps_its_temp(tmp_path):
    path = write_json(tmp_path / "ckpt.json", {"epoch": 1})
    code = (
        "import sys, time\n"
        "from robustmix._io import atomic_write\n"
        "def slow(f):\n"
        "    f.write(b'{\"epoch\": 2'); f.flush(); time.sleep(60)\n"
        "atomic_write(sys.argv[1], slow)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)])
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".ckpt.json.*.tmp")):
            assert writer.poll() is None and time.monotonic() < deadline, "writer never started"
            time.sleep(0.02)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert read_json(path) == {"epoch": 1}  # the old file, whole
    (orphan,) = tmp_path.glob(".ckpt.json.*.tmp")
    assert orphan.name.startswith(f".ckpt.json.{writer.pid}.")
    live = tmp_path / f".ckpt.json.{os.getppid()}.abc.tmp"  # a writer still running: kept
    live.write_bytes(b"")
    write_json(path, {"epoch": 2})
    assert read_json(path) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.json", live.name])


def test_append_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"epoch": 1})
    append_jsonl(path, {"epoch": 2})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"epoch": 1}, {"epoch": 2}]


def test_read_json_names_the_corrupt_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('{"clean": {"error": 0.1, "loss')
    with pytest.raises(ValueError, match=r"eval\.json' is not valid JSON: Unterminated string starting at: line 1") as info:
        read_json(path)
    assert str(path) in str(info.value)
    path.write_bytes(b'{"a": "\xff"}')  # not UTF-8
    with pytest.raises(ValueError, match=rf"^{re.escape(repr(str(path)))} is not valid JSON: 'utf-8' codec can't decode"):
        read_json(path)
