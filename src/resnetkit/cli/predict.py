"""``resnetkit predict CHECKPOINT IMAGE_OR_FOLDER...``: top-k classes per image.

Folders are walked recursively and globs expanded. A file that cannot be read is reported on
its own line (``{"path", "error"}`` with --json, stderr with --csv) and the others go on; the
exit status is then 1 (0 when every image was classified, 2 for a usage error).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint",
        description="Classify images with a checkpoint (or a run folder: its best checkpoint); "
                    "preprocessing and class names come from the checkpoint. Exit status 1 when "
                    "some file could not be read.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+", help="files, folders (recursive), globs")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default 5)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help='one object per line: {"path", "top": [{"class", "index", "prob"}], "label"}')
    fmt.add_argument("--csv", action="store_true", help="columns path,class,prob (the answer per image)")
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="answer 'unknown' when the top probability is below P")
    p.add_argument("--annotate", metavar="DIR",
                   help="also write each image into DIR as <name>.png with its top class and "
                        "probability drawn on it (small images enlarged to 160 px)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--backend", default="torch",
                   help="inference engine: torch (default), onnx (onnxruntime) or torchscript; the "
                        "last two run model.onnx / model.ts beside the checkpoint, or the .onnx / .ts "
                        "file given in place of the checkpoint")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..predict import (annotate_file, collect_images, load, output_folder,  # lazy dispatch: torch loads to run
                           output_names)

    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise UserError(f"--min-confidence is a probability in [0, 1], got {args.min_confidence}")
    paths = collect_images(args.images)
    if not paths:
        raise UserError(f"no image files found in {', '.join(args.images)}")
    if args.annotate:
        output_folder(args.annotate, "--annotate")
    clf = load(args.checkpoint, device=args.device, backend=args.backend)
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.csv else None
    if writer:
        writer.writerow(["path", "class", "prob"])
    failed = 0
    names = output_names(paths) if args.annotate else []
    for start in range(0, len(paths), args.batch_size):
        chunk = clf.predict(paths[start:start + args.batch_size], topk=args.topk,
                            batch_size=args.batch_size, min_confidence=args.min_confidence)
        for i, r in enumerate(chunk, start):
            failed += "error" in r
            emit(r, writer, args.json)
            if args.annotate and "error" not in r:
                annotate_file(r, Path(args.annotate) / f"{names[i]}.png")
    return 1 if failed else 0


def emit(r: dict[str, Any], writer: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r), flush=True)
    elif writer is not None:
        if "error" in r:
            print(f"resnetkit: cannot read {r['path']}: {r['error']}", file=sys.stderr)
        else:
            writer.writerow([r["path"], r["label"], f"{r['top'][0]['prob']:.6f}"])
    elif "error" in r:
        print(f"{r['path']}  error: {r['error']}", flush=True)
    else:
        top = "  ".join(f"{t['class']} ({100 * t['prob']:.1f}%)" for t in r["top"])
        head = "unknown; best:" if r["label"] == "unknown" else "->"
        print(f"{r['path']}  {head} {top}", flush=True)
