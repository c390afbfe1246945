"""``resnetkit evaluate CHECKPOINT_OR_RUN_DIR``: accuracy, per-class metrics, confusion image."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="top-1/top-5, per-class metrics and a confusion matrix of a checkpoint",
        description="Evaluate a checkpoint (or a run folder: its best checkpoint) with the "
                    "preprocessing and classes stored in it.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("--dataset", metavar="NAME", help="another dataset with the same classes "
                                                     "(default: the one it was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset lives (default: as trained); "
                                                     "another image folder without train/, val/ or "
                                                     "test/ folders is all test: every image is scored")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="test (default): the split read once at the end of training; val: the "
                        "split that chose the checkpoint; train: the images it trained on. All "
                        "three are rebuilt from the checkpoint's config and seed")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average the logits of each image, its horizontal flip (where the data trains "
                        "with flips) and both shifted by 1 px (default: as trained)")
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    p.add_argument("--out", metavar="FILE", help="confusion matrix image "
                                                 "(default: confusion-<split>.png beside the checkpoint; "
                                                 "with --dataset, confusion-<dataset>-<split>.png)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--batch-size", type=int, metavar="N", help="default: as trained")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint, evaluation, report  # lazy dispatch: torch loads only to run

    path = checkpoint.resolve_checkpoint_path(args.checkpoint)
    png = Path(args.out) if args.out else evaluation.default_confusion_path(path, args.split, args.dataset)
    result = evaluation.evaluate(path, dataset=args.dataset, data_dir=args.data_dir, split=args.split, tta=args.tta,
                      device=args.device, batch_size=args.batch_size, confusion_png=png)
    if args.json:
        print(json.dumps(result))
        return 0
    split = "val (no test split)" if result.get("test_is_val") else result["split"]
    title = f"{result['dataset']} {split}{', tta' if result['tta'] else ''}"
    print(f"{result['checkpoint']}  ({result['model']})")
    print(report.format_report(result, title=title))
    if result.get("selection_note"):
        print(f"note: {result['selection_note']}")
    scaled = f" (logits / temperature {result['temperature']:.3f})" if result["temperature"] != 1.0 else ""
    if "confusion_png_error" in result:
        print(f"{result['source']}; loss {result['loss']:.4f}{scaled}")
        print(f"resnetkit: warning: no confusion matrix image: {result['confusion_png_error']}",
              file=sys.stderr)
    else:
        print(f"{result['source']}; loss {result['loss']:.4f}{scaled}; confusion matrix: {png}")
    return 0
