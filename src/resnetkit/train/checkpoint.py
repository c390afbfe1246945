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

from .._io import write_atomic
from ..data.specs import DatasetSpec
from ..errors import UserError

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
    from .. import __version__

    meta = {"arch": arch, "model_args": dict(model_args), "spec": spec.to_dict(),
            "classes": list(spec.classes), "config": dict(config), "metrics": dict(metrics),
            "resnetkit_version": __version__}
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    metadata["format_version"] = FORMAT_VERSION
    tensors = model_tensors(model)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


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


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint file or run folder, weights loaded, in eval mode."""
    from .. import models

    p = resolve_checkpoint_path(path)
    meta, tensors = read_metadata(p)
    model = models.create_model(meta["arch"], **meta["model_args"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{p}: the weights do not fit {meta['arch']}({meta['model_args']}): "
                        f"{str(e).splitlines()[0]}") from None
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, spec=DatasetSpec.from_dict(meta["spec"]),
                            classes=list(meta["classes"]), config=meta["config"],
                            metrics=meta["metrics"], arch=meta["arch"],
                            model_args=meta["model_args"], path=p, meta=meta)


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to resume from {p}: not a plain tensor file ({first[:200]})") from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UserError(f"{p} is not a resnetkit resume state")
    return state
