"""``resnetkit bench --model M``: images/s of a network under each precision and speed setting;
``--probe``: what the speed probe has cached; ``--reprobe``: measure the probe's choice again."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from typing import Any

from .. import _omp
from ..errors import UserError
from .summary import parse_input_size
from .train import add_model_arg, parse_model_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="images/s of a network for each precision, memory format and compile setting",
        description="Time training steps (forward, backward, SGD update) and/or inference steps of "
                    "a registered network on random inputs for fp32 and bf16 autocast (and fp16 "
                    "with loss scaling on CUDA) x channels_last on/off x torch.compile on/off. "
                    "Warm-up steps are not timed (the timing loop of the speed probe that "
                    "`resnetkit train --precision auto` runs). Prints a table and the fastest setting "
                    "with its speed-up over fp32 eager. A setting that cannot run here (e.g. torch.compile "
                    "without a C++ compiler) is reported as failed.")
    p.add_argument("--model", metavar="M", help="registry name (see `resnetkit models`)")
    p.add_argument("--probe", action="store_true",
                   help="print the speed probe's cache (each network's chosen precision, memory format "
                        "and threads, with its speed and spread) and the OpenMP wait policy; time nothing")
    p.add_argument("--reprobe", action="store_true",
                   help="with --model: run `resnetkit train`'s speed probe now (threads included) for "
                        "that network, a 10-class head, --input-size and --batch-size, and measure the "
                        "OpenMP wait policy (ACTIVE against PASSIVE, in new processes); both replace "
                        "their cache entries unless the machine was too busy for a verdict")
    add_model_arg(p)
    p.add_argument("--input-size", metavar="C,H,W",
                   help="input channels, height and width (default: the model's, e.g. 3,32,32); "
                        "C sets the model's in_chans")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--train", dest="modes", action="store_const", const=["train"],
                       help="time training steps only")
    modes.add_argument("--infer", dest="modes", action="store_const", const=["infer"],
                       help="time inference steps only (default: both)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per step (default 64)")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps per setting (default 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed steps before timing each setting (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile settings (they compile for a while on a CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run, modes=None)


def run(args: argparse.Namespace) -> int:
    if args.probe and not args.reprobe:
        print(cache_text())
        return 0
    if not args.model:
        raise UserError("bench needs --model M (or --probe to print the probe's cache)")
    from .. import bench, models, probe, runtime  # lazy dispatch: torch loads only to run

    info = models.model_info(args.model)
    size = info.input_size if args.input_size is None else parse_input_size(args.input_size)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        raise UserError("--batch-size and --steps must be positive and --warmup not negative")
    device = runtime.resolve_device(args.device)
    model_args = parse_model_args(args.model_arg)
    modes = args.modes or ["train", "infer"]
    if args.reprobe:
        choice = bench.reprobe(args.model, size, args.batch_size, device, model_args)
        if args.json:
            print(json.dumps(dataclasses.asdict(choice), default=str))
            return 0
        print(f"speed: {choice.describe()}")
        if device.type == "cpu":
            print(probe.wait_line(choice.wait_policy))
        return 0
    # its "No CUDA runtime is found" warning on CPU-only machines says nothing about the result
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if not args.json:
        print(header(args, size, bench.environment(device)), flush=True)

    def progress(row: dict[str, Any]) -> None:
        print(f"  {row['mode']} {bench.setting_name(row)}: "
              f"{row['error'] or format(row['images_per_s'], ',.0f') + ' images/s'}",
              file=sys.stderr, flush=True)

    rows = bench.bench_grid(args.model, size, batch_size=args.batch_size, modes=modes, steps=args.steps,
                            warmup=args.warmup, device=device, compile=args.compile, model_args=model_args,
                            progress=progress)
    if args.json:
        best = {m: (bench.setting_name(b) if (b := bench.fastest(rows, m)) else None) for m in modes}
        print(json.dumps({"model": args.model, "model_args": model_args,
                          "input_size": list(size), "batch_size": args.batch_size,
                          "steps": args.steps, "warmup": args.warmup,
                          "environment": bench.environment(device),
                          "rows": rows, "fastest": best}, indent=2))
    else:
        print(bench.format_table(rows))
    return 0


def header(args: argparse.Namespace, size: tuple[int, int, int], env: dict[str, Any]) -> str:
    model_args = "".join(f" {a}" for a in args.model_arg)
    hw = env.get("gpu") or f"{env['cpu']}, {env['cpu_cores']} cores, {env['cpu_threads']} threads"
    return (f"{args.model}{model_args} | input {'x'.join(map(str, size))} | batch {args.batch_size} | "
            f"{args.steps} timed steps after {args.warmup} warm-up | {env['device']}: {hw} | "
            f"torch {env['torch_version']}")


def cache_text() -> str:
    """The probe's cache and the wait-policy verdicts, read without torch."""
    path = _omp.cache_dir() / "probe.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = {}
    lines = [f"speed probe cache: {path} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})"]
    for e in entries.values() if isinstance(entries, dict) else []:
        if not isinstance(e, dict):
            continue
        setting = " + ".join([str(e.get("precision"))] + ["channels_last"] * bool(e.get("channels_last"))
                             + [f"{e['threads']} thread(s)"] * bool(e.get("threads")))
        net = e.get("network", "?")
        with contextlib.suppress(ValueError, TypeError):
            parsed = json.loads(net)
            net = f"{parsed['model']} {json.dumps(parsed.get('args', {}), separators=(',', ':'))}"
        speed = f"{e['images_per_s']:,.0f} img/s" if e.get("images_per_s") else "?"
        spread = f" +-{e['spread'] / 2:.0%}" if isinstance(e.get("spread"), (int, float)) else ""
        lines.append(f"  {net} | input {'x'.join(map(str, e.get('input_size') or []))} | batch "
                     f"{e.get('batch_size', '?')}: {setting} at {speed}{spread} ({e.get('cpu', '?')}, "
                     f"{e.get('written', '?')})")
    verdict = _omp.read_verdict()
    now = _omp.current()
    lines.append(f"OpenMP wait policy of this process: {now['policy'] or 'OpenMP default'} "
                 f"({now['chosen_by']}: {now['note']})")
    if verdict:
        lines.append(f"  this machine's verdict: {verdict['policy']} ({verdict.get('reason', '')}; "
                     f"{verdict.get('written', '?')})")
    else:
        lines.append("  this machine's verdict: none yet (PASSIVE until measured: "
                     "`resnetkit bench --reprobe --model M` or a long enough run measures it)")
    return "\n".join(lines)
