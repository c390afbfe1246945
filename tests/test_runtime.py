"""runtime.keep_freed_memory: glibc's malloc keeps freed blocks, so a training step's activations
come back without page faults; a user's own allocator or settings are left alone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from resnetkit import runtime

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
USER_SETTINGS = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                 runtime.ALLOCATOR_OPT_OUT)

# Activations of 1-8 MiB freed and allocated again, as a training step does; the page faults of
# the second round are counted after the first has sized the heap.
CHURN = textwrap.dedent("""
    import json, resource, sys, torch
    from resnetkit.runtime import keep_freed_memory

    def churn():
        for _ in range(5):
            held = [torch.ones(n << 18) for n in (1, 3, 6, 2, 8, 4)]
            del held

    state = keep_freed_memory()
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"state": state, "again": keep_freed_memory(), "faults": faults}))
""")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    return {**env, **extra}


def churn_in_new_process(**extra: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", CHURN], env=clean_env(**extra), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="tunes glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    result = churn_in_new_process()
    assert result["state"] == result["again"] == "kept"
    # 30 blocks of 1-8 MiB would take over 30,000 faults if handed back to the kernel each time.
    assert result["faults"] < 200


@pytest.mark.parametrize("setting, value, state", [
    ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "preloaded"),
    ("LD_PRELOAD", "libtcmalloc_minimal.so.4", "preloaded"),
    ("RESNETKIT_SYSTEM_MALLOC", "1", "env"),
    ("MALLOC_TRIM_THRESHOLD_", "131072", "env"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", "env"),
])
def test_a_users_own_allocator_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch, setting: str,
                                                       value: str, state: str) -> None:
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(setting, value)
    assert runtime._tune_allocator() == state


def test_opting_out_with_zero_still_tunes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(runtime.ALLOCATOR_OPT_OUT, "0")
    assert runtime._tune_allocator() == ("kept" if GLIBC else "not glibc")


def test_cpu_runs_tune_it_and_gpu_runs_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("tuned") or "kept")
    with runtime.cpu_threads(None, torch.device("meta")):
        pass
    assert calls == []
    with runtime.cpu_threads(None, torch.device("cpu")):
        pass
    assert calls == ["tuned"]
