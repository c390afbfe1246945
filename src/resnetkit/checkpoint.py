"""Self-describing checkpoints (safetensors) and the resume state (state.pt).

A ``.safetensors`` checkpoint holds the weights of the unwrapped model and, as metadata, all
that is needed to use it: ``format_version`` ("1") and, each encoded as JSON, ``arch``,
``model_args``, ``spec`` (the DatasetSpec: classes and preprocessing), ``classes``, ``config``
(the resolved RunConfig), ``metrics`` and ``resnetkit_version``; once calibrated, also
``calibration`` (:mod:`resnetkit.calibrate`: the temperature and its ECE). Reading one never runs code:
safetensors is a JSON header plus raw tensors, and ``state.pt`` is read with
``torch.load(weights_only=True)``, which refuses any pickle that names a callable.
Every write goes through :mod:`resnetkit._io`: a kill at any moment leaves the old file or the
new one, never a torn one.
"""
from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import models
from ._io import pickled_code, write_atomic
from ._version import __version__
from .errors import UserError, first_line
from .specs import DatasetSpec

FORMAT_VERSION = "1"
BEST, LAST, STATE = "best.safetensors", "last.safetensors", "state.pt"
JSON_KEYS = ("arch", "model_args", "spec", "classes", "config", "metrics", "resnetkit_version")
OPTIONAL_JSON_KEYS = ("calibration",)  # added by `resnetkit calibrate`: {"temperature", ...}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers, whose state_dict keys carry those prefixes."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
                type(model).__name__ == "DataParallel" and hasattr(model, "module")):
            model = model.module
        else:
            return model


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies of the unwrapped model's parameters and buffers."""
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in unwrap_model(model).state_dict().items()}


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, arch: str,
                    model_args: Mapping[str, Any], spec: DatasetSpec, config: Mapping[str, Any],
                    metrics: Mapping[str, Any]) -> None:
    meta = {"arch": arch, "model_args": dict(model_args), "spec": spec.to_dict(),
            "classes": list(spec.classes), "config": dict(config), "metrics": dict(metrics),
            "resnetkit_version": __version__}
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    metadata["format_version"] = FORMAT_VERSION
    tensors = model_tensors(model)
    bad = non_finite(tensors)
    if bad:
        raise NonFiniteWeights(path, bad)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


class NonFiniteWeights(UserError):
    """A checkpoint was not written because a weight or buffer holds NaN or infinity; the file
    already at that path, a good one, is kept."""

    def __init__(self, path: str | os.PathLike[str], names: list[str]) -> None:
        self.names = names
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        kept = "the previous one is kept" if Path(path).exists() else "none was written"
        super().__init__(f"not writing {path}: {len(names)} tensor(s) hold NaN or infinity "
                         f"({shown}); {kept}")


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors (weights and buffers such as BatchNorm's running_var) that hold
    a NaN or an infinity."""
    return [k for k, v in tensors.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # on map_location, in eval mode
    spec: DatasetSpec
    classes: list[str]
    config: dict[str, Any]
    metrics: dict[str, Any]
    arch: str
    model_args: dict[str, Any]
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # every metadata key, decoded


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run folder (its best checkpoint, else its last)."""
    p = Path(path)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                return p / name
        raise UserError(f"no {BEST} or {LAST} in {p}; pass a run folder of 'resnetkit train' "
                        f"or a .safetensors checkpoint")
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}; pass a run folder or a .safetensors file")
    return p


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Decoded metadata and CPU tensors of a resnetkit checkpoint; anything else is refused."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        hint = " (pickled .pt/.pth files are never loaded: they can run code)" if p.suffix in (
            ".pt", ".pth", ".bin", ".ckpt", ".pkl") else ""
        raise UserError(f"{p} is not a safetensors checkpoint{hint}: {str(e).splitlines()[0]}; "
                        f"pass a .safetensors file written by resnetkit") from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{p} is not a resnetkit checkpoint of format {FORMAT_VERSION} "
                        f"(format_version={raw.get('format_version')!r}); re-export it with this version")
    missing = [k for k in JSON_KEYS if k not in raw]
    if missing:
        raise UserError(f"{p} lacks checkpoint metadata {', '.join(missing)}; it was not written by resnetkit")
    try:
        meta = {k: json.loads(raw[k]) for k in JSON_KEYS + OPTIONAL_JSON_KEYS if k in raw}
    except json.JSONDecodeError as e:
        raise UserError(f"{p} has corrupt metadata ({e}); the file is damaged") from None
    meta["format_version"] = FORMAT_VERSION
    return meta, tensors


def recorded_epoch(path: str | os.PathLike[str]) -> int | None:
    """The epoch in a checkpoint's metrics, read from its header alone; None when unreadable."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            epoch = json.loads((f.metadata() or {}).get("metrics", "{}")).get("epoch")
    except (SafetensorError, OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint file or run folder, weights loaded, in eval mode."""
    p = resolve_checkpoint_path(path)
    meta, tensors = read_metadata(p)
    spec = _checked_spec(p, meta)
    _check_against_model(p, meta, spec)
    try:
        model = models.create_model(meta["arch"], **meta["model_args"])
    except (UserError, TypeError, ValueError, KeyError) as e:  # an argument of the wrong type or value
        raise UserError(f"checkpoint {p} is inconsistent: model_args {meta['model_args']} do not "
                        f"build {meta['arch']}: {str(e).splitlines()[0]}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{p}: the weights do not fit {meta['arch']}({meta['model_args']}): "
                        f"{str(e).splitlines()[0]}") from None
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, spec=spec,
                            classes=list(meta["classes"]), config=meta["config"],
                            metrics=meta["metrics"], arch=meta["arch"],
                            model_args=meta["model_args"], path=p, meta=meta)


def _checked_spec(path: Path, meta: Mapping[str, Any]) -> DatasetSpec:
    """The stored DatasetSpec, each field checked against its type: metadata is plain JSON that
    anyone can edit, and a wrong type would otherwise fail far from its cause."""
    raw = meta["spec"]
    problems: list[str] = []
    if not isinstance(raw, dict):
        problems.append(f"spec is a {type(raw).__name__}, not a mapping")
    else:
        for key, ok, want in _SPEC_FIELDS:
            if key in raw and not ok(raw[key]):
                problems.append(f"spec.{key}={raw[key]!r} is not {want}")
        missing = [k for k in ("name", "classes", "in_chans", "img_size", "mean", "std") if k not in raw]
        if missing:
            problems.append(f"spec lacks {', '.join(missing)}")
    if not isinstance(meta["arch"], str):
        problems.append(f"arch={meta['arch']!r} is not a model name")
    if not isinstance(meta["model_args"], dict):
        problems.append(f"model_args={meta['model_args']!r} is not a mapping")
    classes = meta["classes"]
    if not _is_names(classes):
        problems.append("classes is not a list of names")
    elif isinstance(raw, dict) and _is_names(raw.get("classes")) and list(raw["classes"]) != list(classes):
        problems.append("classes and spec.classes differ")
    if problems:
        raise UserError(f"checkpoint {path} is inconsistent: {'; '.join(problems)}")
    return DatasetSpec.from_dict(raw)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_SPEC_FIELDS = (
    ("name", lambda v: isinstance(v, str), "a string"),
    ("classes", _is_names, "a list of names"),
    ("in_chans", _is_int, "a positive integer"),
    ("img_size", _is_int, "a positive integer"),
    ("mean", _is_numbers, "a list of numbers"),
    ("std", lambda v: _is_numbers(v) and all(x > 0 for x in v), "a list of positive numbers"),
    ("resize_size", lambda v: v is None or _is_int(v), "a positive integer or null"),
    ("interpolation", lambda v: v in ("bilinear", "bicubic", "nearest"), "bilinear, bicubic or nearest"),
)


def _check_against_model(path: Path, meta: Mapping[str, Any], spec: DatasetSpec) -> None:
    """What the metadata claims (class count, input channels, per-channel mean/std) must match
    the network the weights were loaded into (strictly, so its shapes are the tensors'): three
    class names on a 10-output head would otherwise fail later with an IndexError."""
    problems: list[str] = []
    args, classes = meta["model_args"], meta["classes"]
    outputs, chans = args.get("num_classes"), args.get("in_chans")
    if isinstance(outputs, int) and outputs > 0 and outputs != len(classes):
        problems.append(f"{len(classes)} class names but the head has {outputs} outputs")
    if isinstance(chans, int) and chans != spec.in_chans:
        problems.append(f"spec.in_chans is {spec.in_chans} but the stem takes {chans} channels")
    if len(spec.mean) != spec.in_chans or len(spec.std) != spec.in_chans:
        problems.append(f"mean/std have {len(spec.mean)}/{len(spec.std)} values for {spec.in_chans} channel(s)")
    if problems:
        raise UserError(f"checkpoint {path} is inconsistent: {'; '.join(problems)}")


# ------------------------------------------------------------------ resume state
def save_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write the resume state; it must hold only tensors, numbers, strings and containers."""
    write_atomic(path, lambda tmp: torch.save(dict(state), tmp))


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a resume state with ``weights_only=True``: a pickle naming any callable (os.system,
    eval, a class) is refused before anything runs."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no resume state at {p}; --resume takes a run folder of 'resnetkit train'")
    try:
        with warnings.catch_warnings():  # protocol notes about a file about to be refused anyway
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's refusal of a callable names it so; a legacy pickle of protocol 4 fails before
        # ("Unsupported operand 149"), and its opcodes are read for the code it names
        if "unsupported global" not in str(e).lower() and not pickled_code(p):
            raise UserError(unreadable_state(p, e)) from None
        # torch's message advises weights_only=False, which would run whatever the file names
        raise UserError(f"refusing to resume from {p}: it holds pickled code or objects other "
                        f"than tensors, numbers and strings, and was not loaded; a resnetkit run "
                        f"never writes such a file, so do not load it another way") from None
    except Exception as e:  # noqa: BLE001 - garbage or a truncated file fails anywhere in the
        # unpickler (struct.error, KeyError, UnicodeDecodeError, a zip reader's RuntimeError...)
        raise UserError(unreadable_state(p, e)) from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UserError(unreadable_state(p, "it holds no epoch and model"))
    return state


def unreadable_state(path: Path, why: str | Exception) -> str:
    """The one line for a damaged state.pt: the run cannot be continued, its checkpoints (separate
    files) are not touched, and a new run needs another folder."""
    if isinstance(why, Exception):  # the gist: torch's zip reader goes on for three sentences
        why = ("missing entry " if isinstance(why, KeyError) else "") + first_line(why).split(". ")[0]
    kept = [name for name in (BEST, LAST) if (path.parent / name).is_file()]
    intact = (f"; its checkpoints {' and '.join(kept)} are separate files and are not touched "
              f"(evaluate, predict and export take them)" if kept else "")
    return (f"refusing to resume from {path}: not a readable resume state ({why}), so the run cannot "
            f"be continued{intact}; start a new run with another --out")
