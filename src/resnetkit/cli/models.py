"""``resnetkit models [PATTERN]``: the registered networks with their parameter counts."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the registered networks",
        description="List the registered networks with their parameter counts (with 1000 classes "
                    "for the ImageNet nets, 10 for the CIFAR and simple nets), their options and "
                    "what each one is.")
    p.add_argument("pattern", nargs="?", metavar="PATTERN", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import describe, list_models  # lazy dispatch: torch loads only to run

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; run `resnetkit models` to see them all")
    rows = [describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'model':{width}}  {'params':>7}  {'classes':>7}  description [options]")
    for r in rows:
        options = f" [{', '.join(r['options'])}]" if r["options"] else ""
        print(f"{r['name']:{width}}  {r['params'] / 1e6:6.2f}M  {r['num_classes']:7d}  "
              f"{r['description']}{options}")
    print("params: with 1000 classes for the ImageNet nets, 10 for the CIFAR and simple nets")
    return 0
