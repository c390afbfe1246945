"""``resnetkit calibrate RUN_OR_CHECKPOINT``: temperature scaling, stored in the checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate", help="fit a temperature so that probabilities match accuracy (Guo et al. 2017)",
        description="Fit one temperature T on the validation split (logits / T, by LBFGS on the "
                    "negative log-likelihood; Guo et al. 2017, arXiv:1706.04599) and store it in the "
                    "checkpoint's metadata, where predict, evaluate and export use it. Prints the "
                    "expected calibration error (15 bins) before and after, on the validation and "
                    "the test split; a run folder's report.json gets the new 'ece' and its "
                    "report.html is rebuilt. Accuracy does not change. A split too small (under 100 "
                    "images) or too accurate (under 5 mistakes) to fit on keeps T = 1, with a warning.")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its best.safetensors) or a .safetensors checkpoint")
    p.add_argument("--split", choices=("val", "test", "train"),
                   help="fit on this split (default: val; test only where this version has no val split)")
    p.add_argument("--json", action="store_true", help="print the calibration record as JSON")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import calibrate, report_html  # lazy dispatch: torch loads only to run

    record = calibrate.calibrate_checkpoint(args.checkpoint, split=args.split, device=args.device)
    run_dir = Path(args.checkpoint)
    if run_dir.is_dir() and (run_dir / report_html.FILENAME).is_file():
        report_html.write_run_report(run_dir, device=args.device)
    if args.json:
        print(json.dumps(record))
        return 0
    path = run_dir / record["checkpoint"] if run_dir.is_dir() else run_dir
    how = (f"kept, not fitted on the {record['fit_images']} {record['fit_on']} images: see the warning"
           if "warning" in record else f"fitted on {record['fit_images']} {record['fit_on']} images")
    print(f"{path}: temperature {record['temperature']:.4f} ({how})")
    print(f"ECE (15 bins) on {record['fit_on']}: {100 * record['ece_before']:.2f}% -> "
          f"{100 * record['ece_after']:.2f}%; NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}")
    if "test_ece_before" in record:
        print(f"ECE (15 bins) on test: {100 * record['test_ece_before']:.2f}% -> "
              f"{100 * record['test_ece_after']:.2f}%; NLL {record['test_nll_before']:.4f} -> "
              f"{record['test_nll_after']:.4f}")
    if "note" in record:
        print(f"note: {record['note']}")
    return 0
