"""The OpenMP wait policy: set once, at the command line's entry, before torch starts its threads.

OpenMP reads ``OMP_WAIT_POLICY`` when torch loads it and never again, so the choice is made
without torch: the user's own value is kept; else the verdict the speed probe measured for this
machine (``wait_policy.json`` beside the probe's cache); else PASSIVE, which sleeps at a barrier
instead of spinning. Spinning threads that share a core with another busy process slowed a
2-thread training step 18-26x on a 2-core AMD EPYC, where PASSIVE kept 4-6x more of it; what
PASSIVE costs on a quiet machine is measured per machine (:func:`resnetkit.probe.measure_wait_policy`).
The choice and who made it travel to child processes (torchrun's ranks) in the environment.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ._io import read_json_dict, write_json_atomic
from .errors import UserError

ENV = "OMP_WAIT_POLICY"
BY_ENV = "RESNETKIT_WAIT_POLICY_BY"  # who chose it: cache, default (or probe); unset: the user
POLICIES = ("ACTIVE", "PASSIVE")
DEFAULT = "PASSIVE"
VERSION = 1
_LOADED_FIRST = "torch was loaded before resnetkit's entry, so OpenMP kept its own default"


def cache_dir() -> Path:
    """$RESNETKIT_CACHE (the folder the decode cache uses too), else the user cache folder."""
    env = os.environ.get("RESNETKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "resnetkit" / "cache"


def verdict_file() -> Path:
    return cache_dir() / "wait_policy.json"


def cpu_line(prefix: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return ""


def usable_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_key() -> str:
    """What the verdict belongs to: the chip, its cores, the OpenMP that torch ships."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "?"
    parts = {"cpu": cpu_line("model name") or platform.processor() or platform.machine(),
             "flags": sorted((cpu_line("flags") or cpu_line("Features")).split()),
             "cores": usable_cores(), "torch": torch_version, "v": VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def read_verdicts() -> dict[str, Any]:
    """The measured verdicts; an unreadable file counts as empty (it is only a cache)."""
    return read_json_dict(verdict_file())


def read_verdict() -> dict[str, Any] | None:
    entry = read_verdicts().get(machine_key())
    return entry if isinstance(entry, dict) and entry.get("policy") in POLICIES else None


def write_verdict(entry: dict[str, Any] | None) -> None:
    """Record this machine's verdict (None: forget it)."""
    verdicts = read_verdicts()
    if entry is None:
        verdicts.pop(machine_key(), None)
    else:
        verdicts[machine_key()] = entry
    with contextlib.suppress(OSError, UserError):  # a read-only home only costs the next run a measurement
        verdict_file().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(verdict_file(), verdicts)


def set_at_entry(force_default: bool = False) -> None:
    """Choose the policy of this process, before torch loads. ``force_default``: PASSIVE even
    where a verdict exists (a re-measurement must not run beside this process's own spinning
    threads). A value the user set is left alone; so is one chosen by a parent resnetkit."""
    if "torch" in sys.modules or (ENV in os.environ and not force_default):
        return
    if force_default and ENV in os.environ and BY_ENV not in os.environ:
        return  # the user's own value, even for a re-measurement
    verdict = None if force_default else read_verdict()
    os.environ[ENV] = verdict["policy"] if verdict else DEFAULT
    os.environ[BY_ENV] = "cache" if verdict else "default"


def current() -> dict[str, Any]:
    """This process's policy and who chose it: user, cache, default, or none (torch came first)."""
    policy = os.environ.get(ENV)
    if policy is None:
        return {"policy": None, "chosen_by": "none", "note": _LOADED_FIRST}
    by = os.environ.get(BY_ENV, "user")
    notes = {"user": f"{ENV}={policy} was set by the user",
             "cache": "measured on this machine earlier",
             "default": "the default until measured on this machine"}
    return {"policy": policy.upper(), "chosen_by": by, "note": notes.get(by, "")}
