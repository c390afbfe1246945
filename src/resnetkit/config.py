"""RunConfig: one frozen dataclass that the CLI, the checkpoint and the run folder share.

The keys are the long flag names of ``resnetkit train`` with dashes as underscores, so a
``--config FILE`` (YAML or JSON) uses exactly the same names as the command line. A value of
``None`` means "let the dataset preset or the recipe decide"; the resolved config, with every
value filled in, is what lands in config.json and in the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError


@dataclass(frozen=True)
class RunConfig:
    # -- model
    model: str | None = None  # registry name; None: the dataset's or recipe's default
    model_args: dict[str, Any] = field(default_factory=dict)  # extra builder kwargs, e.g. small_input
    pretrained: str | None = None  # imagenet | a torchvision weights name | a local file
    freeze: str = "none"  # none | backbone | stages:N
    freeze_epochs: int = 0  # epochs with the backbone frozen before unfreezing
    backbone_lr_mult: float = 0.1  # backbone lr = lr * this, after unfreezing
    # -- data
    dataset: str = "digits"
    data_dir: str | None = None  # None: $RESNETKIT_DATA, else ~/.cache/resnetkit/data
    download: bool = False
    img_size: int | None = None
    augment: str | None = None  # none | basic | strong
    val_fraction: float = 0.2  # image folders with no val/ or test/ split
    subset: int | None = None  # train on the first N samples of a fixed shuffle (experiments, smoke tests)
    strict: bool = False  # unreadable image files are an error instead of a warning
    workers: int | None = None  # DataLoader workers for image folders
    # -- optimisation
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None  # sgd | adam | adamw
    weight_decay: float | None = None
    schedule: str | None = None  # onecycle | cosine | step | constant
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    early_stop: int | None = None  # patience in evaluations
    eval_every: int = 1
    tta: bool = False  # test-time horizontal-flip augmentation at evaluation
    # -- hardware and speed
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    nproc: int = 1
    threads: int | None = None  # CPU threads of torch's intra-op pool; None: the recipe's, else torch's
    # -- output
    out: str | None = None  # run folder; None: runs/<dataset>-<model>-<timestamp>
    resume: str | None = None
    log_grad_norms: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(
                f"unknown config key(s): {', '.join(unknown)}; valid keys are the flag names of "
                f"'resnetkit train' with dashes as underscores (e.g. batch_size)"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of RunConfig keys (dashes become underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}; pass a YAML or JSON file with --config")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # YAML is a superset of JSON, so this reads both

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        if mark is not None:  # YAML: name the line and what is wrong there
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            where = f"line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(e, json.JSONDecodeError):
            what, where = e.msg, f"line {e.lineno}, column {e.colno}"
        else:
            what, where = str(e).splitlines()[0], "?"
        raise UserError(f"cannot parse config file {p} at {where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values, not {type(data).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    RunConfig.from_dict(out)  # validates the keys
    return out


def recorded_config(saved: Mapping[str, Any]) -> RunConfig:
    """The config a run folder or checkpoint recorded, as this version reads it: keys it does not
    know are dropped, and a recorded data folder that is not on this machine (the run was moved
    or copied) is dropped too, so that $RESNETKIT_DATA and then the cache apply. An image
    folder's path is kept: it is the data itself, and its absence is the error to report."""
    known = set(field_names())
    values = {k: v for k, v in saved.items() if k in known}
    folder = values.get("data_dir")
    if folder and values.get("dataset") != "imagefolder" and not Path(folder).expanduser().exists():
        values["data_dir"] = None
    return RunConfig.from_dict(values)
