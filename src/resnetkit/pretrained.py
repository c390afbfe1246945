"""Pretrained weights for transfer learning: ``--pretrained SOURCE``.

SOURCE is one of

- ``imagenet``: torchvision's default ImageNet weights of the architecture (resnet18..152,
  resnext50_32x4d, resnext101_32x8d, wide_resnet50_2, wide_resnet101_2, densenet121),
  downloaded once into torch's hub cache (``torch.hub.get_dir()/checkpoints``);
- a torchvision weights name of the architecture, e.g. ``IMAGENET1K_V2``;
- a local file: a ``.pth``/``.pt`` state_dict, a torchvision or timm checkpoint (a dict wrapping
  the state_dict under ``state_dict``, ``model``, ``model_state_dict`` or ``state_dict_ema``;
  ``module.`` and ``_orig_mod.`` prefixes are stripped), a ``.safetensors`` file, or a resnetkit
  checkpoint or run folder.

Reading a file never runs code from it: pickles go through ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. Loading adapts what can be adapted and
says so, one line each: a new head for another number of classes, conv1 summed (1 channel) or
repeated and rescaled (more than 3, as timm's ``adapt_input_conv``), conv1 left freshly
initialised for the small-input 3x3 stem. Anything else that does not fit is a UserError naming
the keys; :func:`load_pretrained` returns what it adapted (:class:`Loaded`). The weights' own
preprocessing (torchvision's ``weights.transforms()``: resize, crop, mean, std, interpolation) is
:func:`weights_preprocessing`; the trainer passes it to the data, so the run's DatasetSpec and
its checkpoint predict with it.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from ._io import pickled_code
from .checkpoint import read_metadata, resolve_checkpoint_path
from .config import RunConfig
from .errors import UserError, first_line
from .models import head_name
from .specs import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, Preprocessing

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "densenet121")
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")  # timm, torchvision, Lightning
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar", ".safetensors")
SHOW = 3  # keys named in a mismatch message; the rest are counted


@dataclass(frozen=True)
class Source:
    """A resolved ``--pretrained`` value."""

    text: str  # as given
    kind: str  # torchvision | file | resnetkit
    path: Path | None = None
    weights: Any = None  # a torchvision WeightsEnum member (kind torchvision)

    @property
    def label(self) -> str:
        if self.kind == "torchvision":
            return f"torchvision {self.weights}"
        return str(self.path)


@dataclass
class Weights:
    """The tensors of a source, with a resnetkit checkpoint's metadata when it is one."""

    source: Source
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Loaded:
    """What :func:`load_pretrained` did: one line per thing loaded or adapted, and the modules
    left freshly initialised (the head aside), which fine-tuning trains even while frozen."""

    notes: list[str]
    fresh_modules: list[str]


# ------------------------------------------------------------------ resolving a source
def resolve_source(text: str, arch: str | None) -> Source:
    """``imagenet``, a torchvision weights name of ``arch``, or an existing file or run folder."""
    t = str(text).strip()
    path = Path(t).expanduser()
    if t.lower() == "imagenet":
        return Source(t, "torchvision", weights=torchvision_weights(arch, "DEFAULT", t))
    if path.exists():
        if path.is_dir():
            path = resolve_checkpoint_path(path)
        return Source(t, "resnetkit" if _resnetkit_meta(path) else "file", path=path)
    if os.sep in t or "/" in t or path.suffix.lower() in WEIGHT_SUFFIXES:
        raise UserError(f"--pretrained {t}: no such file; pass imagenet, a torchvision weights name "
                        f"(e.g. IMAGENET1K_V1) or an existing .pth/.pt/.safetensors file")
    return Source(t, "torchvision", weights=torchvision_weights(arch, t, t))


def torchvision_weights(arch: str | None, name: str, given: str) -> Any:
    """The member ``name`` of torchvision's weights enum for ``arch`` (DEFAULT: the recommended)."""
    from torchvision.models import get_model_weights

    if arch not in TORCHVISION_ARCHS:
        raise UserError(f"--pretrained {given}: torchvision has ImageNet weights for "
                        f"{', '.join(TORCHVISION_ARCHS)}, not {arch}; choose one of those with --model "
                        f"or pass a weights file")
    enum = get_model_weights(arch)
    key = name.split(".")[-1].upper()  # ResNet50_Weights.IMAGENET1K_V2 or imagenet1k_v2
    try:
        return enum[key]
    except KeyError:
        names = ", ".join(["imagenet", *enum.__members__])
        raise UserError(f"--pretrained {given}: not a file, nor a torchvision weights name of {arch}; "
                        f"choose one of {names}, or pass a .pth/.pt/.safetensors file") from None


def weights_file(weights: Any) -> Path:
    """Where torchvision keeps ``weights``: torch.hub.get_dir()/checkpoints/<basename of the url>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def fetch(weights: Any) -> Path:
    """The cached file of torchvision ``weights``, downloaded first when missing.

    A failed download (offline, a proxy, a bad hash) is one line naming the file to fetch by
    hand and the folder to put it in."""
    path = weights_file(weights)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]+)\.", path.name)  # torchvision names files <arch>-<sha256 prefix>.pth
    try:
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=sys.stderr.isatty())
    except Exception as e:  # noqa: BLE001 - any failure here means: fetch the file another way
        reason = first_line(e, 160)
        raise UserError(f"cannot download {weights} ({reason}); offline, download {weights.url} and put "
                        f"{path.name} in {path.parent}, then run again") from None
    return path


def check_source(text: str, arch: str | None) -> Source:
    """Resolve ``text`` and make sure its weights are at hand (downloads torchvision's); a fast
    failure before any data is read."""
    source = resolve_source(text, arch)
    if source.kind == "torchvision":
        fetch(source.weights)
    return source


# ------------------------------------------------------------------ reading weights
def read_weights(source: Source) -> Weights:
    """The tensors of ``source``, unwrapped from checkpoint dicts and wrapper prefixes."""
    if source.kind == "resnetkit":
        meta, tensors = read_metadata(source.path)
        return Weights(source, tensors, meta)
    path = fetch(source.weights) if source.kind == "torchvision" else source.path
    assert path is not None
    if _is_safetensors(path):
        return Weights(source, _strip(_load_safetensors(path)))
    obj = _torch_load(path)
    tensors, where = unwrap_state_dict(obj, path)
    weights = Weights(source, _strip(tensors))
    if where:
        extra = f", epoch {obj['epoch']}" if isinstance(obj, Mapping) and "epoch" in obj else ""
        weights.notes.append(f"weights from the {where} entry of the checkpoint{extra}")
    return weights


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict inside a checkpoint dict, and where it was (``''``: the top level)."""
    where = ""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}, where
        inner = obj if isinstance(obj, Mapping) else {}
        key = next((k for k in CONTAINER_KEYS if isinstance(inner.get(k), Mapping)), None)
        if key is None:
            break
        obj, where = obj[key], f"{where}['{key}']"
    found = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
    raise UserError(f"{path} holds no state_dict (found: {found or 'nothing'}); pass a dict of tensors "
                    f"or a checkpoint dict with one of {', '.join(CONTAINER_KEYS)}")


def _strip(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a bad file
        code = re.search(r"GLOBAL ([\w.]+)", str(e))  # the callable the pickle names
        # a legacy (not zip) pickle of protocol 4 fails before torch names it ("Unsupported operand")
        named = code.group(1) if code else ", ".join(pickled_code(path)[:3])
        if named:
            raise UserError(f"refusing to load {path}: unpickling it would run code ({named}), "
                            f"so it was not loaded; "
                            f"only plain tensors are read (torch.load weights_only=True): save "
                            f"model.state_dict() instead, or convert the file to .safetensors") from None
        raise UserError(f"{path} is not a readable weights file ({first_line(e, 160)}); pass a .pth/.pt "
                        f"state_dict, a torchvision or timm checkpoint, or a .safetensors file") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable safetensors file ({first_line(e, 160)})") from None


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and a JSON header '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _resnetkit_meta(path: Path) -> dict[str, str] | None:
    """The raw metadata of a resnetkit checkpoint, None for any other file."""
    if not path.is_file() or not _is_safetensors(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - reported when the tensors are read
        return None
    return meta if "format_version" in meta and "arch" in meta else None


# ------------------------------------------------------------------ adapting to a model
def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> tuple[torch.Tensor, str] | None:
    """conv1 filters for ``in_chans`` inputs (timm's ``adapt_input_conv``): 1 channel sums the RGB
    filters; N > 3 repeats them and scales by 3/N so the activations keep their size. None when
    there is no sensible mapping."""
    have = weight.shape[1]
    w = weight.float()
    if in_chans == have:
        return weight, ""
    if in_chans == 1 and have == 3:
        out = w.sum(dim=1, keepdim=True)
        return out.to(weight.dtype), "conv1: the RGB filters summed into 1 input channel"
    if have == 3:
        out = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
        return out.to(weight.dtype), (f"conv1: the RGB filters repeated to {in_chans} input channels "
                                      f"and scaled by 3/{in_chans}")
    if have == 1:
        out = w.repeat(1, in_chans, 1, 1) / in_chans
        return out.to(weight.dtype), f"conv1: the 1-channel filters spread over {in_chans} input channels"
    return None


def adapt_state_dict(tensors: Mapping[str, torch.Tensor], model: nn.Module, *, arch: str, label: str,
                     same_classes: bool | None = None, source_arch: str | None = None
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``tensors`` made to fit ``model``: old key names renamed (the model's ``filter_state_dict``,
    e.g. DenseNet's), a new or no head, an adapted or fresh first conv; the lines saying so.
    Anything else that does not fit raises a UserError that names the keys and shapes
    (``source_arch``: the weights' architecture when known, for the hint)."""
    target = model.state_dict()
    rename = getattr(model, "filter_state_dict", None)
    src = rename(tensors) if callable(rename) else dict(tensors)
    notes: list[str] = []
    fresh = _adapt_head(src, target, head_name(model), same_classes, notes)
    fresh |= _adapt_stem(src, target, getattr(model, "first_conv", "conv1"), notes)
    check_fit(src, target, fresh, arch=arch, label=label, source_arch=source_arch)
    return src, notes


def _adapt_head(src: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], head: str,
                same_classes: bool | None, notes: list[str]) -> set[str]:
    """Drop the weights' classifier where the model has none (num_classes=0, features_only) or
    one for other classes; the model's head keys left freshly initialised."""
    hw, tw = src.get(f"{head}.weight"), target.get(f"{head}.weight")
    dropped = [k for k in src if k.startswith(f"{head}.")]
    if hw is not None and tw is None and not any(k.startswith(f"{head}.") for k in target):
        for k in dropped:
            del src[k]
        notes.append(f"no head: the weights' {' and '.join(dropped)} dropped (the model returns features)")
        return set()
    if not (hw is not None and tw is not None and hw.ndim == 2 and hw.shape[1] == tw.shape[1]
            and (hw.shape[0] != tw.shape[0] or same_classes is False)):
        return set()
    for k in dropped:
        del src[k]
    why = "other classes" if hw.shape[0] == tw.shape[0] else f"{hw.shape[0]} classes"
    notes.append(f"new head: the weights' {' and '.join(dropped)} ({why}) dropped; {head} for "
                 f"{tw.shape[0]} classes freshly initialised")
    return {k for k in target if k.startswith(f"{head}.")}


def _adapt_stem(src: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], conv: str,
                notes: list[str]) -> set[str]:
    """The first conv for another number of input channels, or the small-input 3x3 stem afresh."""
    key = f"{conv}.weight"
    cw, tc = src.get(key), target.get(key)
    if not (cw is not None and tc is not None and cw.ndim == 4 and tc.ndim == 4 and cw.shape != tc.shape
            and cw.shape[0] == tc.shape[0]):
        return set()
    if cw.shape[2:] != tc.shape[2:]:
        # bn1's statistics describe the dropped filters' outputs: the whole stem starts afresh
        stem = [k for k in src if k == key or k.startswith("bn1.")]
        for k in stem:
            del src[k]
        k, kw = tc.shape[2], cw.shape[2]
        notes.append(f"stem: {conv} and bn1 freshly initialised (the model's {k}x{k} small-input {conv}; "
                     f"the weights' is {kw}x{kw})")
        return {k for k in target if k == key or k.startswith("bn1.")}
    if (adapted := adapt_input_conv(cw, tc.shape[1])) is not None:
        src[key], line = adapted
        notes.append(line.replace("conv1:", f"{conv}:", 1))
    return set()


def check_fit(src: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], fresh: set[str], *,
              arch: str, label: str, source_arch: str | None = None) -> None:
    """Raise a UserError listing missing, unexpected and mis-shaped keys (first few + counts)."""
    missing = [k for k in target if k not in src and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in src if k not in target]
    shapes = [k for k in src if k in target and tuple(src[k].shape) != tuple(target[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        shown = "; ".join(f"{k} {_shape(src[k])} in the file vs {_shape(target[k])}" for k in shapes[:SHOW])
        parts.append(f"{len(shapes)} with another shape ({shown}{'; ...' if len(shapes) > SHOW else ''})")
    for name, keys in (("missing from the file", missing), ("not in the model", unexpected)):
        if keys:
            more = ", ..." if len(keys) > SHOW else ""
            parts.append(f"{len(keys)} {name} ({', '.join(keys[:SHOW])}{more})")
    guess = source_arch or guess_arch(src)
    hint = (f"; they look like {guess} weights: pass --model {guess}" if guess and guess != arch
            else f"; pass weights of {arch}")
    raise UserError(f"{label} does not fit {arch}: {', '.join(parts)}{hint}")


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def guess_arch(keys: Sequence[str] | Mapping[str, Any]) -> str | None:
    """The torchvision ResNet whose block layout these state_dict keys have, if any."""
    keys = list(keys)
    blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = any(".conv3." in k for k in keys if k.startswith("layer"))
    layouts = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
               ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
               ((3, 8, 36, 3), True): "resnet152"}
    return layouts.get((blocks, bottleneck))


def load_pretrained(model: nn.Module, text: str, *, arch: str | None = None,
                    classes: Sequence[str] | None = None) -> Loaded:
    """Load ``--pretrained text`` into ``model`` in place, adapting head and conv1; what was
    loaded and adapted. ``classes``: the data's (a resnetkit checkpoint keeps its head only for
    the very same classes)."""
    arch = arch or type(model).__name__
    source = resolve_source(text, arch)
    weights = read_weights(source)
    same = None
    if source.kind == "resnetkit" and classes is not None:
        same = list(weights.meta.get("classes", [])) == list(classes)
    state, notes = adapt_state_dict(weights.tensors, model, arch=arch, label=source.label, same_classes=same,
                                    source_arch=weights.meta.get("arch"))
    merged = {**model.state_dict(), **state}  # a missing num_batches_tracked keeps the model's 0
    model.load_state_dict(merged, strict=True)
    fresh = {k.rsplit(".", 1)[0] for k in merged if k not in state and not k.endswith("num_batches_tracked")}
    first = f"pretrained: {source.label}, {len(state)} tensors loaded into {arch}"
    return Loaded([first, *weights.notes, *notes], sorted(fresh - {head_name(model)}))


# ------------------------------------------------------------------ preprocessing
def source_preprocessing(source: Source) -> Preprocessing | None:
    """The preprocessing the weights were trained with; None when the file does not say."""
    if source.kind == "torchvision":
        t = source.weights.transforms()
        return Preprocessing(tuple(t.mean), tuple(t.std), int(t.crop_size[0]), int(t.resize_size[0]),
                             str(t.interpolation.value))
    if source.kind == "resnetkit":
        meta = _resnetkit_meta(source.path) or {}
        try:
            spec = DatasetSpec.from_dict(json.loads(meta["spec"]))
        except (KeyError, TypeError, ValueError):
            return None
        return Preprocessing(spec.mean, spec.std, spec.img_size, spec.resize_size, spec.interpolation)
    return None


def weights_preprocessing(cfg: RunConfig) -> Preprocessing:
    """What ``cfg.pretrained`` was trained with: torchvision weights and resnetkit checkpoints say;
    for a file that does not, ImageNet's mean and std at the data's own size."""
    pre = source_preprocessing(resolve_source(cfg.pretrained, cfg.model or "resnet18"))
    return pre or Preprocessing(IMAGENET_MEAN, IMAGENET_STD)


def describe_spec(spec: DatasetSpec) -> str:
    geometry = (f"resize {spec.resize_size}, center crop {spec.img_size}" if spec.resize_size
                else f"resize to {spec.img_size}x{spec.img_size}")
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    return (f"preprocessing: {geometry} ({spec.interpolation}), mean {fmt(spec.mean)}, "
            f"std {fmt(spec.std)}")
