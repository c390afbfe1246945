"""``resnetkit train``: one flag per RunConfig field, ``--config FILE`` for defaults.

Every flag defaults to argparse.SUPPRESS, so the namespace holds exactly the flags given: they
win over the config file, which wins over the recipe, which fills everything left unset.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import UserError

S = argparse.SUPPRESS
BOOL = argparse.BooleanOptionalAction

# (flag, argparse keywords) per RunConfig field, in help order, grouped.
FLAGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "model": [
        ("--model", dict(metavar="NAME", help="registry name (resnetkit models); default: the recipe's")),
        ("--model-arg", dict(metavar="KEY=VALUE", action="append", dest="model_arg",
                             help="builder argument, repeatable; VALUE is read as JSON when it "
                                  "parses (true, 3, \"B\"), else as text. e.g. small_input=true")),
        ("--pretrained", dict(metavar="WEIGHTS", help="imagenet, a torchvision weights name or a file")),
        ("--freeze", dict(metavar="WHAT", help="none | backbone | stages:N (with --pretrained)")),
        ("--freeze-epochs", dict(type=int, metavar="N", help="epochs before unfreezing the backbone")),
        ("--backbone-lr-mult", dict(type=float, metavar="X", help="backbone lr = lr * X after unfreezing")),
        ("--drop-rate", dict(type=float, metavar="P", help="dropout before the classifier, 0..1 (Keras' "
                                                          "Dropout head; default: the model's, 0)")),
    ],
    "data": [
        ("--dataset", dict(metavar="NAME", help="digits (default, bundled), mnist, fashion-mnist, "
                                                "cifar10, cifar100, imagefolder")),
        ("--data-dir", dict(metavar="DIR", help="where datasets live (default $RESNETKIT_DATA, else "
                                                "~/.cache/resnetkit/data); the folder for imagefolder")),
        ("--download", dict(action=BOOL, help="let torchvision download a missing MNIST, Fashion-MNIST "
                                              "or CIFAR dataset")),
        ("--img-size", dict(type=int, metavar="PX", help="model input size (default: the dataset's)")),
        ("--augment", dict(choices=("none", "basic", "strong"), help="training augmentation")),
        ("--val-fraction", dict(type=float, metavar="F", help="held-out share of an image folder "
                                                              "without val/ or test/ (default 0.2)")),
        ("--subset", dict(type=int, metavar="N", help="train on N samples (stratified, seeded)")),
        ("--strict", dict(action=BOOL, help="unreadable image files are an error, not a warning")),
        ("--workers", dict(type=int, metavar="N", help="loader processes for image folders")),
    ],
    "optimisation": [
        ("--recipe", dict(metavar="NAME", help="preset of the values below: default, fast (MNIST, "
                                               "Fashion-MNIST), finetune (a pretrained ResNet-18)")),
        ("--epochs", dict(type=int, metavar="N")),
        ("--batch-size", dict(type=int, metavar="N", help="global batch size")),
        ("--lr", dict(type=float, metavar="LR", help="peak learning rate")),
        ("--optimizer", dict(choices=("sgd", "adam", "adamw"), help="sgd: momentum 0.9, Nesterov")),
        ("--weight-decay", dict(type=float, metavar="WD", help="on conv and linear weights only")),
        ("--schedule", dict(choices=("onecycle", "cosine", "step", "constant"), help="per-batch lr schedule")),
        ("--warmup-epochs", dict(type=float, metavar="E", help="linear warmup (one-cycle: the rise)")),
        ("--label-smoothing", dict(type=float, metavar="EPS")),
        ("--early-stop", dict(type=int, metavar="PATIENCE", help="stop after PATIENCE evaluations "
                                                                 "without a better test accuracy")),
        ("--eval-every", dict(type=int, metavar="N", help="evaluate every N epochs (and the last)")),
        ("--tta", dict(action=BOOL, help="evaluate on each image and its horizontal flip")),
    ],
    "hardware": [
        ("--seed", dict(type=int, metavar="N")),
        ("--device", dict(metavar="DEV", help="auto (cuda, else mps, else cpu) | cpu | cuda[:N] | mps")),
        ("--precision", dict(choices=("auto", "fp32", "bf16", "fp16"),
                             help="auto: bf16 (else fp16) on CUDA, fp32 on CPU")),
        ("--channels-last", dict(action=BOOL, help="NHWC memory format")),
        ("--compile", dict(action=BOOL, help="torch.compile the model")),
        ("--sync-bn", dict(action=BOOL, help="synchronise BatchNorm across processes")),
        ("--nproc", dict(type=int, metavar="N", help="data-parallel processes on this machine, started "
                                                     "through torchrun; --batch-size stays the global batch")),
        ("--threads", dict(type=int, metavar="N", help="CPU threads for torch (default: the recipe's, "
                                                       "else torch's)")),
    ],
    "output": [
        ("--out", dict(metavar="RUN_DIR", help="run folder (default runs/<dataset>-<model>-<time>)")),
        ("--resume", dict(metavar="RUN_DIR", help="continue an interrupted run with its saved config")),
        ("--log-grad-norms", dict(action=BOOL, help="record per-stage gradient norms in metrics.jsonl")),
    ],
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a model (no arguments: a small ResNet on the bundled digits)",
        description="Train a residual network. With no arguments: a small ResNet on scikit-learn's "
                    "8x8 digits, about 98% test accuracy in well under a minute on a laptop CPU. "
                    "Flags win over --config, which wins over the recipe.")
    p.add_argument("--config", metavar="FILE", default=S,
                   help="YAML or JSON file of the same keys (batch_size or batch-size)")
    for group, flags in FLAGS.items():
        g = p.add_argument_group(group)
        for flag, kw in flags:
            g.add_argument(flag, default=S, **kw)
    p.set_defaults(func=run)
    return p


def parse_model_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--model-arg takes KEY=VALUE, got {item!r} (e.g. --model-arg small_input=true)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig fields set by --config and by flags (flags win); nothing else."""
    from ..config import load_config_file

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    values = load_config_file(args.config) if hasattr(args, "config") else {}
    if "model_arg" in given:
        given["model_args"] = {**values.get("model_args", {}), **parse_model_args(given.pop("model_arg"))}
    return {**values, **given}


def train_argv(args: argparse.Namespace, drop: tuple[str, ...] = ("nproc",)) -> list[str]:
    """The command-line arguments that give ``args`` back, without the flags in ``drop``."""
    out = ["--config", str(args.config)] if hasattr(args, "config") else []
    for flags in FLAGS.values():
        for flag, kw in flags:
            dest = kw.get("dest", flag[2:].replace("-", "_"))
            if dest in drop or not hasattr(args, dest):
                continue
            value = getattr(args, dest)
            if kw.get("action") is BOOL:
                out.append(flag if value else "--no-" + flag[2:])
            elif kw.get("action") == "append":
                out += [item for v in value for item in (flag, str(v))]
            else:
                out += [flag, str(value)]
    return out


def run(args: argparse.Namespace) -> int:
    from ..train import distributed, train

    values = config_values(args)
    nproc = distributed.requested_nproc(values)
    if nproc > 1 and distributed.launched_world_size() == 1:  # --nproc N: become torchrun
        distributed.precheck(values, nproc)
        return distributed.launch(train_argv(args), nproc)
    result = train(values)
    if result.stopped_early and distributed.is_main_process():
        print(f"stopped early after epoch {result.last_metrics['epoch']}")
    return 0
