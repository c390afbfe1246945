"""benchmarks/gpu.py, the one command of a GPU visit, run at toy size on the CPU (--dry-run), so
that it cannot rot between visits: every step runs, and the JSON and markdown are written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_cifar_pickles

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_step(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_cifar_pickles(data)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out),
                           "--data-dir", str(data)], capture_output=True, text=True, timeout=1900)
    results = json.loads((out / "gpu.json").read_text())
    steps = ["environment", "bench", "cifar10_fast", "paper_table6", "ddp", "export"]
    assert [k for k in results if k in steps] == steps, proc.stdout + proc.stderr
    assert {k: results[k]["status"] for k in steps} == {k: "ok" for k in steps}, proc.stdout
    assert proc.returncode == 0
    assert results["cifar10_fast"]["runs"][0]["top1"] is not None
    assert set(results["paper_table6"]["nets"]) == {"resnet20", "resnet56"}
    assert results["ddp"]["same_top1"] is True  # one process under torchrun = the plain run
    assert "skipped" in results["export"]["onnx_parity_cuda"]
    md = (out / "gpu.md").read_text()
    assert "Dry run" in md and "### cifar10_fast (ok)" in md
    # nothing of the runs is left behind but the results
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu.md"]


def test_gpu_script_ends_its_children_on_sigterm(tmp_path: Path) -> None:
    """A caller's `timeout` sends SIGTERM: the step running then (a process group of its own)
    must end with the script, not train on with nobody waiting."""
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"),
                             "--only", "bench"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    started: list[int] = []
    try:
        for line in proc.stderr:  # the environment step's child, then the bench step's
            if "started pid" in line:
                started.append(int(line.split("started pid", 1)[1].split(":", 1)[0]))
                if len(started) == 2:
                    break
        assert len(started) == 2, "the script started no bench step"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the group is gone (a zombie reaped by init at most)
        try:
            os.killpg(started[1], 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the bench step's process group {started[1]} outlived the script")
