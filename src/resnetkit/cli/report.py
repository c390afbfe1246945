"""``resnetkit report RUN_DIR``: rebuild a run's report.html (and class_indices.json, the ECE)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="rebuild report.html of a run folder",
        description="Write RUN_DIR/report.html, one self-contained page (images inlined, opens "
                    "offline, fits a phone): settings and environment, curves, confusion matrix, "
                    "most-confused pairs, per-class precision/recall/F1, the test images with the "
                    "highest loss with Grad-CAM overlays, a reliability diagram with the ECE (15 "
                    "bins) and, for fine-tuning runs, what was frozen when. Runs the best checkpoint "
                    "over the test split once; also writes class_indices.json and 'ece' into report.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a training run")
    p.add_argument("--top-losses", type=int, default=12, metavar="K",
                   help="test images in the top-losses gallery (default 12)")
    p.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam",
                   help="heat map of the gallery (default gradcam)")
    p.add_argument("--layer", metavar="NAME",
                   help="module whose feature map Grad-CAM weights, e.g. layer3 or layer4.1 (default: "
                        "the last stage whose map is at least 7x7; the map is upsampled to the input)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import report_html  # lazy dispatch: torch loads only to run

    if args.top_losses < 0:
        raise UserError(f"--top-losses must be >= 0, got {args.top_losses}")
    rep = report_html.write_run_report(args.run_dir, device=args.device, top_k=args.top_losses,
                                       method=args.method, layer=args.layer)
    ece, split = rep.get("ece"), rep.get("split") or "test"  # "val": the run had no test split
    print(f"wrote {Path(args.run_dir) / report_html.FILENAME}"
          + (f"  ({split} top-1 {100 * rep['top1']:.2f}%, ECE {100 * ece:.2f}%)" if ece is not None else ""))
    return 0
