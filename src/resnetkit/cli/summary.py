"""``resnetkit summary MODEL``: output shape, parameters and FLOPs of each stage."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .train import add_model_arg, parse_model_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary", help="shapes, parameters and FLOPs of a network, stage by stage",
        description="Run one image through a registered network and print, per part (stem, "
                    "each stage, pooling, head), its output shape, parameters and FLOPs. FLOPs "
                    "count convolutions and linear layers, a multiply-add as 2 FLOPs.")
    p.add_argument("model", metavar="MODEL", help="registry name (see `resnetkit models`)")
    p.add_argument("--input-size", metavar="C,H,W",
                   help="input channels, height and width (default 3,224,224 for the ImageNet nets, "
                        "3,32,32 for the CIFAR and simple nets); C sets the model's in_chans")
    p.add_argument("--num-classes", type=int, metavar="N", help="classes of the head (default: the model's)")
    add_model_arg(p)
    p.add_argument("--depth", type=int, choices=(1, 2, 3), default=1,
                   help="1: one row per stage (default); 2: also one row per block; 3: every layer "
                        "(the stem's conv1, bn1, relu, maxpool and each layer of each block)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def parse_input_size(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise UserError(f"--input-size takes three positive integers C,H,W (e.g. 3,32,32), got {text!r}")
    return size  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from ..models import create_model, model_info, summary  # lazy dispatch: torch loads only to run

    info = model_info(args.model)
    size = info.input_size if args.input_size is None else parse_input_size(args.input_size)
    kwargs = {"num_classes": args.num_classes, **parse_model_args(args.model_arg), "in_chans": size[0]}
    summary.check_input(args.model, size, flag="--input-size", model_args=parse_model_args(args.model_arg))
    model = create_model(args.model, **kwargs)
    d = summary.summarize(model, size, depth=args.depth, name=args.model)
    print(json.dumps(d, indent=2) if args.json else summary.format_summary(d))
    return 0
