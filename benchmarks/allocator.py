"""A lever measured and not taken: keeping freed memory in the process (glibc's ``mallopt``).

PyTorch's CPU allocator frees each activation after use, and glibc hands large blocks back to the
kernel (above its mmap threshold, or as the heap's top is trimmed), so the next training step takes
page faults to get them back; PyTorch's CPU tuning guides preload jemalloc or tcmalloc for this.
Alternated pairs of new processes train the fast recipe's Fashion-MNIST network on fixed random
batches at the setting ``--precision auto`` chose: one with glibc's malloc as it comes, one after
``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` and ``mallopt(M_MMAP_THRESHOLD, 32 MiB)``, the order
swapped every pair. Each reports wall and CPU time (user + system), system time and page faults
per step; the section gives medians and the median of the per-pair ratios, which a slow spell of a
shared machine affects least. Rewrites the ``allocator`` section of BENCHMARKS.md.

    python benchmarks/allocator.py                 # 10 pairs of 60 steps
    python benchmarks/allocator.py --pairs 4 --steps 20 --no-write
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _md import provenance, write_section  # noqa: E402

MODES = ("system", "kept")
WARMUP = 5
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h


def keep_freed_memory() -> bool:
    """glibc: never trim the heap's top; blocks up to 32 MiB (its largest threshold) from the heap."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


def child(mode: str, steps: int, setting: str) -> dict[str, float | str]:
    from run import build_net, fast_config

    from resnetkit.data import dataset_spec
    from resnetkit.runtime import cpu_threads, resolve_precision
    from resnetkit.steps import train_step

    device = torch.device("cpu")
    cfg = fast_config(Path("."), device)
    spec = dataset_spec(cfg)
    precision, cl = setting.split(",")
    state = ("kept" if keep_freed_memory() else "mallopt failed") if mode == "kept" else "as it comes"
    with cpu_threads(cfg.threads, device):
        model, optimizer = build_net(cfg, device, channels_last=cl == "1")
        x = torch.randn(cfg.batch_size, spec.in_chans, spec.img_size, spec.img_size)
        y = torch.randint(0, spec.num_classes, (cfg.batch_size,))
        if cl == "1":
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = resolve_precision(precision, device).autocast()
        loss_fn = torch.nn.CrossEntropyLoss()

        def step() -> None:
            train_step(model, x, y, loss_fn=loss_fn, optimizer=optimizer, autocast=autocast, scaler=None)

        for _ in range(WARMUP):
            step()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            step()
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "allocator": state, "wall_ms": 1e3 * wall / steps,
            "cpu_ms": 1e3 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / steps,
            "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / steps,
            "faults": (r1.ru_minflt - r0.ru_minflt) / steps}


def measure(mode: str, steps: int, setting: str) -> dict[str, float | str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    args = [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--setting", setting]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(values: Sequence[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def section(pairs: int, steps: int, cmd: str) -> str:
    from run import fast_config, probe_choice

    from resnetkit.runtime import cpu_threads

    device = torch.device("cpu")
    cfg = fast_config(Path("."), device)
    with cpu_threads(cfg.threads, device):
        choice = probe_choice(cfg, device)
    setting = f"{choice.precision},{int(choice.channels_last)}"
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(pairs):
        print(f"  allocator: pair {i + 1}/{pairs} ...", file=sys.stderr, flush=True)
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            rows[mode].append(measure(mode, steps, setting))
    states = {m: sorted({str(r["allocator"]) for r in rows[m]}) for m in MODES}
    lines = ["### A lever not taken: keeping freed memory in the process (glibc `mallopt`)", "", provenance(cmd),
             f"The fast recipe's Fashion-MNIST network {cfg.model} "
             f"{json.dumps(cfg.model_args, separators=(',', ':'))}, batch {cfg.batch_size}, one fixed "
             f"random batch, {choice.describe()}, {torch.get_num_threads()} threads; {steps} timed steps after "
             f"{WARMUP} per process; {pairs} alternated pairs of new processes (order swapped each "
             f"pair). Median (min-max) per step; CPU = user + system time of all threads.", "",
             "| malloc | state | wall ms | CPU ms | system ms | page faults |",
             "|---|---|---:|---:|---:|---:|"]
    for mode, what in zip(MODES, ("glibc as it comes", "freed memory kept (mallopt)")):
        r = rows[mode]
        lines.append(f"| {what} | {', '.join(states[mode])} | {spread([x['wall_ms'] for x in r], '.1f')} | "
                     f"{spread([x['cpu_ms'] for x in r], '.1f')} | {spread([x['sys_ms'] for x in r], '.2f')} | "
                     f"{spread([x['faults'] for x in r], ',.0f')} |")
    ratio = {k: statistics.median(s[k] / k_[k] for s, k_ in zip(rows["system"], rows["kept"]))
             for k in ("wall_ms", "cpu_ms")}
    lines += ["", f"Speed-up of keeping freed memory, median of the {pairs} per-pair ratios: "
              f"**{ratio['wall_ms']:.2f}x** in wall time, {ratio['cpu_ms']:.2f}x in CPU time."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--no-write", dest="write", action="store_false", help="print only")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--setting", default="fp32,1", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.setting)))
        return 0
    if args.pairs < 1 or args.steps < 1:
        p.error("--pairs and --steps must be positive")
    argv = list(sys.argv[1:] if argv is None else argv)
    text = section(args.pairs, args.steps, " ".join(["python benchmarks/allocator.py", *argv]))
    print(text, flush=True)
    if args.write:
        write_section(HERE.parent / "BENCHMARKS.md", "allocator", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
