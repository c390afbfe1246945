"""``resnetkit train``: one flag per RunConfig field, ``--config FILE`` for defaults.

The flags come from RunConfig's fields and their metadata (:func:`resnetkit.config.flag`), so a
new field is a new flag. Every flag defaults to argparse.SUPPRESS, so the namespace holds exactly
the flags given: they win over the config file, which wins over the recipe, which fills
everything left unset.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

from ..config import RunConfig, choices, load_config_file
from ..errors import UserError

S = argparse.SUPPRESS
BOOL = argparse.BooleanOptionalAction


def _flag(f: dataclasses.Field, annotation: Any) -> tuple[str, dict[str, Any]]:
    """The flag and argparse keywords of one RunConfig field, from its metadata and type."""
    meta = dict(f.metadata)
    name = meta.pop("flag", "--" + f.name.replace("_", "-"))
    meta.pop("group")
    meta.pop("datasets", None)  # which data reads it: for commands fixed to one dataset (finetune)
    if meta.pop("choices", None) and "metavar" not in meta:
        meta["metavar"] = choices_metavar(f.name)
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    if kinds[0] is bool:
        meta["action"] = BOOL
    elif kinds[0] in (int, float):
        meta["type"] = kinds[0]
    return name, meta


def choices_metavar(name: str) -> str:
    """RunConfig field ``name``'s choices as argparse shows them, {a,b,c}. They are checked once,
    by :func:`resnetkit.config.check_choice`, when the config is resolved."""
    return "{" + ",".join(choices(name)) + "}"


def flag_table(dataset: str | None = None) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """(flag, argparse keywords) per RunConfig field, grouped in field order; with ``dataset``,
    only the fields that dataset reads."""
    hints = typing.get_type_hints(RunConfig)
    table: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for f in dataclasses.fields(RunConfig):
        if dataset is None or dataset in f.metadata.get("datasets", (dataset,)):
            table.setdefault(f.metadata["group"], []).append(_flag(f, hints[f.name]))
    return table


FLAGS = flag_table()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a model (no arguments: a small ResNet on the bundled digits)",
        description="Train a residual network. With no arguments: a small ResNet on scikit-learn's "
                    "8x8 digits, about 98% test accuracy in well under a minute on a laptop CPU. "
                    "A validation split held out of the training images chooses the checkpoint; "
                    "the test split is evaluated once, at the end. "
                    "Flags win over --config, which wins over the recipe.")
    add_train_flags(p)
    p.set_defaults(func=run)
    return p


def add_train_flags(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """--config and one flag per RunConfig field (train and lr-find share them), less the fields
    in ``exclude`` (a command that has no use for them)."""
    p.add_argument("--config", metavar="FILE", default=S,
                   help="YAML or JSON file of the same keys (batch_size or batch-size)")
    p.add_argument("--dry-run", action="store_true", default=S,
                   help="print the resolved plan (config, dataset sizes, epochs, train_flops = 3 x "
                        "forward FLOPs x images trained) and train nothing")
    p.add_argument("--json", action="store_true", default=S, help="with --dry-run: one JSON object on stdout")
    for group, flags in FLAGS.items():
        g = p.add_argument_group(group)
        for flag, kw in flags:
            if kw.get("dest", flag[2:].replace("-", "_")) not in exclude:
                g.add_argument(flag, default=S, **kw)


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    """``--model-arg KEY=VALUE``, repeatable, as ``resnetkit train`` takes it, for every command
    that builds a network; ``args.model_arg`` is the list given (:func:`parse_model_args`)."""
    flag, kw = next((f, kw) for f, kw in FLAGS["model"] if f == "--model-arg")
    parser.add_argument(flag, default=[], **kw)


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
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "func", "config", "dry_run", "json")}
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
    if getattr(args, "json", False) and not getattr(args, "dry_run", False):
        raise UserError("--json goes with --dry-run (a training run prints its log, not JSON)")
    from .launch import dry_run, train_or_launch  # lazy dispatch: torch loads only to train

    if getattr(args, "dry_run", False):
        return dry_run(config_values(args), as_json=getattr(args, "json", False))
    return train_or_launch(config_values(args), train_argv(args))
