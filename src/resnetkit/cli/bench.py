"""``resnetkit bench --model M``: images/s of a network under each precision and speed setting."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..errors import UserError
from .summary import parse_input_size
from .train import add_model_arg, parse_model_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="images/s of a network for each precision, memory format and compile setting",
        description="Time training steps (forward, backward, SGD update) and/or inference steps of "
                    "a registered network on random inputs for fp32 and bf16 autocast (and fp16 "
                    "with loss scaling on CUDA) x channels_last on/off x torch.compile on/off. "
                    "Warm-up steps are not timed. Prints a table and the fastest setting with its "
                    "speed-up over fp32 eager. A setting that cannot run here (e.g. torch.compile "
                    "without a C++ compiler) is reported as failed.")
    p.add_argument("--model", required=True, metavar="M", help="registry name (see `resnetkit models`)")
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
    from .. import bench, models, runtime  # lazy dispatch: torch loads only to run

    info = models.model_info(args.model)
    size = info.input_size if args.input_size is None else parse_input_size(args.input_size)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        raise UserError("--batch-size and --steps must be positive and --warmup not negative")
    device = runtime.resolve_device(args.device)
    model_args = parse_model_args(args.model_arg)
    modes = args.modes or ["train", "infer"]
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
