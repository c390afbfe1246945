"""``resnetkit train --nproc N``: start N training processes on this machine through torchrun.

Each process runs ``resnetkit train`` with the same flags (but ``--nproc``) and joins the group
that :mod:`resnetkit.training.distributed` sets up.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import RunConfig
from ..errors import UserError
from ..training import train
from ..training.plan import dry_run as plan_of, format_plan
from ..training.distributed import check_batch_size, check_nproc_devices, is_main_process, launched_world_size
from ..runtime import resolve_device
from ..training.recipes import resolve_config
from ..training.run_folder import resume_config
from ..training.setup import as_config


def dry_run(values: Mapping[str, Any], *, as_json: bool) -> int:
    """``resnetkit train --dry-run``: print the resolved plan (JSON with ``--json``), train nothing."""
    plan = plan_of(RunConfig.from_dict(dict(values)), set(values))
    print(json.dumps(plan) if as_json else format_plan(plan))
    return 0


def train_or_launch(values: Mapping[str, Any], argv: Sequence[str]) -> int:
    """Train in this process, or with ``--nproc N`` (outside torchrun) become torchrun's launcher
    of N processes that each run ``resnetkit train ARGV``."""
    nproc = requested_nproc(values)
    if nproc > 1 and launched_world_size() == 1:
        precheck(values, nproc)
        return launch(argv, nproc)
    result = train(dict(values))
    if result.stopped_early and is_main_process():
        print(f"stopped early after epoch {result.last_metrics['epoch']}")
    return 0


def requested_nproc(values: Mapping[str, Any]) -> int:
    """Processes a ``resnetkit train`` command asks for: --nproc, else the resumed run's."""
    if values.get("nproc"):
        return int(values["nproc"])
    if values.get("resume"):
        path = Path(values["resume"]) / "config.json"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return int(json.loads(path.read_text(encoding="utf-8")).get("nproc") or 1)
    return 1


def precheck(values: Mapping[str, Any], nproc: int) -> None:
    """Refuse what every process would refuse, once, before starting any."""
    config, explicit = as_config(dict(values), {})
    if config.resume:
        config, explicit = resume_config(config, explicit)
    if nproc < 1:
        raise UserError(f"--nproc must be a positive integer, got {nproc}")
    check_batch_size(resolve_config(config, explicit).batch_size, nproc)
    check_nproc_devices(nproc, resolve_device(config.device))


def torchrun_args(train_args: Sequence[str], nproc: int) -> list[str]:
    """torchrun's arguments for ``resnetkit train TRAIN_ARGS`` on ``nproc`` local processes."""
    return ["--standalone", f"--nproc-per-node={nproc}", "--module", "resnetkit", "train", *train_args]


def launch(train_args: Sequence[str], nproc: int) -> int:
    """Run ``resnetkit train TRAIN_ARGS`` in ``nproc`` processes on this machine through torchrun's
    agent; its exit status. When one process fails the agent stops the others (within a second)
    and this prints one line naming it."""
    # torch.distributed's launcher loads only when --nproc asks for it: `resnetkit --help` stays fast.
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun's own default is one thread per process; share the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in list(logging.root.manager.loggerDict):  # the agent's notes; the line below says it all
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args(torchrun_args(train_args, nproc)))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {failure.signal_name()}" if code < 0 else f"exited with status {code}"
        print(f"resnetkit: error: training process {rank} of {nproc} {how}; the other processes were "
              f"stopped (its own message, if any, is above)", file=sys.stderr, flush=True)
        return code if code > 0 else 1
    return 0
