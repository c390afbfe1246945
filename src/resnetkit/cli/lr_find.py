"""``resnetkit lr-find [train flags] --out DIR``: the learning-rate range test."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError
from .train import add_train_flags, config_values


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lr-find", help="learning-rate range test: suggest an lr for a training config",
        description="Smith's learning-rate range test on the data and model that 'resnetkit train' "
                    "would use with the same flags: the lr grows exponentially, one optimizer step "
                    "per batch, until the smoothed loss diverges. Writes DIR/lr_find.png (the "
                    "suggestion marked) and DIR/lr_find.json, and prints the suggested lr (steepest "
                    "descent of the loss). The model and optimizer are restored afterwards; nothing "
                    "is saved as a run.")
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=float, default=1e-7, metavar="LR", help="first lr (default 1e-7)")
    g.add_argument("--end-lr", type=float, default=10.0, metavar="LR", help="last lr (default 10)")
    g.add_argument("--num-iter", type=int, default=100, metavar="N",
                   help="optimizer steps from start to end (default 100)")
    g.add_argument("--diverge", type=float, default=4.0, metavar="X",
                   help="stop when the smoothed loss exceeds X times its minimum (default 4)")
    add_train_flags(p, exclude=UNUSED_KEYS)
    p.set_defaults(func=run)
    return p


RANGE_KEYS = ("start_lr", "end_lr", "num_iter", "diverge")
# train's flags of a run's epochs, evaluations and logs, which the range test has none of
# (resnetkit.training.lr_find.UNUSED_KEYS: kept equal by a test; not imported: torch loads late)
UNUSED_KEYS = ("tensorboard", "early_stop", "time_budget", "eval_every", "tta", "ema", "log_grad_norms")


def run(args: argparse.Namespace) -> int:
    from ..training.lr_find import lr_find, plan  # lazy: the CLI imports training code only when it runs

    values = config_values(argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in RANGE_KEYS}))
    dropped = sorted(k for k in UNUSED_KEYS if k in values)
    if dropped:  # only a --config file can hold them: one shared with train
        print(f"resnetkit: note: lr-find ignores {', '.join(dropped)} of {args.config} (they shape a "
              f"training run, not the range test)", file=sys.stderr)
        values = {k: v for k, v in values.items() if k not in dropped}
    ranges = {k: getattr(args, k) for k in RANGE_KEYS}
    if getattr(args, "dry_run", False):
        p = plan(values, **ranges)
        print(json.dumps(p) if getattr(args, "json", False) else
              f"lr-find: {p['model']} on {p['dataset']}, batch {p['batch_size']}, {p['optimizer']}: lr "
              f"{p['start_lr']:g} -> {p['end_lr']:g} over {p['num_iter']:,} steps ({p['images']:,} images), "
              f"stop at {p['diverge']:g} x the lowest loss; would write {' and '.join(p['writes'])}; "
              f"nothing run (--dry-run)")
        return 0
    if getattr(args, "json", False):
        raise UserError("--json goes with --dry-run (lr-find prints its suggestion, and writes lr_find.json)")
    result = lr_find(values, **ranges)
    out = values.get("out") or "runs/lr-find"
    if result.suggestion is None:
        print(f"no suggestion: the test stopped after {len(result.lrs)} steps ({result.stop}); "
              f"raise --start-lr's distance to the divergence or --num-iter. Curve in {out}/lr_find.png")
        return 1
    print(f"suggested lr: {result.suggestion:.3g} (steepest descent)")
    print(f"curve in {out}/lr_find.png ({result.stop})")
    return 0
