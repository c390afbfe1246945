"""``resnetkit experiment NAME``: experiments of the paper, each a fixed comparison of runs."""
from __future__ import annotations

import argparse
import re

from .train import choices_metavar

DEGRADATION_HELP = """\
Trains plain-N and ResNet-N for each depth N with one recipe and one seed (one run folder per
net under --out), then writes degradation.png (train error dashed, val error solid; plain
nets left, residual nets right, as Fig. 6 of He et al. 2015), grad_norms.png (per-stage
gradient norms), table.md and report.json, and says whether the deeper plain net trained
worse than the shallower one while the deeper residual net did not.

presets (flags override their values):
  cpu    (default) Fashion-MNIST, 10,000 training images at 28 px, depths 20,56, 8 epochs,
         batch 128, SGD lr 0.1 with 1 warmup epoch, divided by 10 at 50% and 75% of the run,
         wd 1e-4, bf16: 7.5 minutes on a 2-core CPU (the plain nets are the CIFAR nets
         of the paper, unchanged, at 28 px).
  paper  the paper's CIFAR-10 run, for a GPU: depths 20,32,44,56, 64k iterations of batch 128
         (164 epochs of 391 batches), lr 0.1 divided by 10 at 32k and 48k, wd 1e-4:
           resnetkit experiment degradation --preset paper --out runs/degradation-paper

A run folder that already holds a finished run of the same settings is reused, and an
interrupted one is resumed, so the same command continues an interrupted experiment.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("experiment", help="reproduce an experiment of the ResNet paper",
                              description="Experiments of He et al. 2015 (arXiv:1512.03385).")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    d = sub.add_parser("degradation", help="plain vs residual nets as depth grows (Fig. 6)",
                       description="The degradation problem: deeper plain nets train worse, "
                                   "residual nets do not.",
                       epilog=DEGRADATION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--preset", default="cpu", choices=("cpu", "paper"), help="default: cpu")
    d.add_argument("--dataset", metavar="NAME", help="fashion-mnist (cpu), cifar10 (paper), mnist, ...")
    d.add_argument("--depths", metavar="N,N,...", help="6n+2 depths, e.g. 20,56 or 20,32,44,56")
    # argparse takes "-4,20" for an option (only -4 or -0.5 read as numbers): read it as the
    # value, for parse_depths to refuse with the valid depths
    d._negative_number_matcher = re.compile(r"^-\d[\d,.]*$")
    d.add_argument("--epochs", type=int, metavar="E")
    d.add_argument("--subset", type=int, metavar="N", help="training images (0: all)")
    d.add_argument("--batch-size", type=int, metavar="N")
    d.add_argument("--lr", type=float, metavar="LR")
    d.add_argument("--precision", metavar=choices_metavar("precision"))
    d.add_argument("--seed", type=int, metavar="N", help="one seed for every net")
    d.add_argument("--device", metavar="DEV", help="auto | cpu | cuda[:N] | mps")
    d.add_argument("--data-dir", metavar="DIR", help="default $RESNETKIT_DATA, else ~/.cache/resnetkit/data")
    d.add_argument("--out", metavar="DIR", help="default runs/degradation-<dataset>-<time>")
    d.set_defaults(func=run)
    add_paper_table(sub)
    return p


def run(args: argparse.Namespace) -> int:
    from ..experiments import degradation  # lazy dispatch: torch loads only to run

    names = ("dataset", "depths", "epochs", "subset", "batch_size", "lr", "precision", "seed",
             "device", "data_dir")
    settings = degradation.preset(args.preset, **{k: getattr(args, k) for k in names})
    degradation.run_degradation(settings, args.out)  # prints the table and the verdict
    return 0


PAPER_TABLE_HELP = """\
Trains ResNet-20/32/44/56/110 on CIFAR-10 with the schedule of He et al. 2015, section 4.2
(SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128, lr /10 at 32k and 48k iterations, stop at 64k;
all 50,000 training images, nothing held out, the last epoch tested once), one run folder per
net under --out, and prints each net's test error against Table 6 (8.75/7.51/7.17/6.97/6.43%)
in table.md and report.json.

  resnetkit experiment paper-table --out runs/paper-table                  # the paper's run, a GPU
  resnetkit experiment paper-table --time-budget 10m --out runs/paper-cpu  # a CPU: 10 min per net
  resnetkit experiment paper-table --iterations 8000 --depths 20,32        # a stated shortening

--time-budget trains each net in a process of its own with that wall time; its schedule is
stretched over the steps that fit and the table says how far it got (epochs and iterations
done of planned). --iterations shortens the schedule (the drops stay at 50% and 75% of it).
A folder's finished runs are reused and an interrupted one is resumed.
"""


def add_paper_table(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("paper-table", help="ResNet-20..110 on CIFAR-10 against the paper's Table 6",
                       description="He et al. 2015, Table 6: CIFAR-10 test error of ResNet-20/32/44/56/110.",
                       epilog=PAPER_TABLE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--depths", metavar="N,N,...", help="a subset of 20,32,44,56,110 (default: all)")
    t.add_argument("--iterations", type=int, metavar="N", help="training steps per net (default 64000)")
    t.add_argument("--time-budget", metavar="DURATION", help="wall time per net, whole process (90s, 10m)")
    t.add_argument("--subset", type=int, metavar="N", help="training images (default: all 50,000)")
    t.add_argument("--batch-size", type=int, metavar="N", help="default 128")
    t.add_argument("--lr", type=float, metavar="LR", help="default 0.1")
    t.add_argument("--precision", metavar=choices_metavar("precision"))
    t.add_argument("--seed", type=int, metavar="N", help="one seed for every net")
    t.add_argument("--device", metavar="DEV", help="auto | cpu | cuda[:N] | mps")
    t.add_argument("--data-dir", metavar="DIR", help="holds cifar10-images/ or cifar-10-batches-py/; "
                                                      "default $RESNETKIT_DATA, else ~/.cache/resnetkit/data")
    t.add_argument("--out", metavar="DIR", help="default runs/paper-table-<time>")
    t.set_defaults(func=run_paper_table)


def run_paper_table(args: argparse.Namespace) -> int:
    from ..experiments import paper_table  # lazy dispatch: torch loads only to run

    names = ("depths", "iterations", "time_budget", "subset", "batch_size", "lr", "precision", "seed",
             "device", "data_dir")
    settings = paper_table.settings(**{k: getattr(args, k) for k in names})
    paper_table.run_paper_table(settings, args.out)  # prints the table against the paper's
    return 0
