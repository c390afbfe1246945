"""A string registry of model builders, as timm's ``_registry.py`` without the tags.

A builder is a tiny keyword-only function named after the model. Its options are its own
keyword parameters plus, for ``**kwargs: Unpack[SomeOptions]``, the keys of that TypedDict:
:func:`create_model` checks a user's keyword arguments against them, so a typo in
``--model-arg`` is a one-line error, not a TypeError traceback from deep inside a constructor.
"""
from __future__ import annotations

import collections.abc
import difflib
import fnmatch
import inspect
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..errors import UserError

IMAGENET_INPUT = (3, 224, 224)
CIFAR_INPUT = (3, 32, 32)
COMMON = ("num_classes", "in_chans")  # every builder takes these
HEAD_OPTIONS = ("global_pool", "drop_rate", "features_only")  # and these (heads.HeadOptions), listed last

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its builder and what the CLI shows about it."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # the default (C, H, W) for summaries
    min_size: int = 8  # the smallest input side (px) the net takes

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.builder) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def num_classes(self) -> int:
        """The builder's default number of classes (1000 for ImageNet nets, 10 for CIFAR)."""
        return int(inspect.signature(self.builder).parameters["num_classes"].default)

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments the builder takes besides ``num_classes`` and ``in_chans``,
        each with its type."""
        hints = typing.get_type_hints(self.builder)
        found: dict[str, Any] = {}
        for p in inspect.signature(self.builder).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in COMMON:
                found[p.name] = hints.get(p.name, Any)
            elif p.kind is p.VAR_KEYWORD:
                found.update(_unpacked(self.builder, hints.get(p.name)))
        return {**{k: v for k, v in found.items() if k not in HEAD_OPTIONS},
                **{k: v for k, v in found.items() if k in HEAD_OPTIONS}}

    @property
    def own_options(self) -> list[str]:
        """The options of this family, without the head options that every model takes."""
        return [k for k in self.options if k not in HEAD_OPTIONS]


_REGISTRY: dict[str, ModelInfo] = {}


def _unpacked(builder: Callable[..., Any], hint: Any) -> dict[str, Any]:
    """The keys and types of ``T`` in ``**kwargs: Unpack[T]`` (PEP 692)."""
    if hint is None:
        raise TypeError(f"{builder.__name__}: annotate **kwargs as Unpack[SomeTypedDict]")
    (options,) = typing.get_args(hint)
    return typing.get_type_hints(options)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_value(model: str, key: str, hint: Any, value: Any, default: Any = None) -> None:
    """A UserError naming ``key``, the value given and a valid one when ``value`` does not fit
    ``hint``: a --model-arg VALUE that is not JSON arrives as text ("abc", "16,32")."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:  # ``int | None``: None is the builder's default
            return
        (hint,) = [a for a in args if a is not type(None)]
    origin, choices = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        ok, want, example = value in choices, " or ".join(map(repr, choices)), choices[0]
    elif hint is bool:
        ok, want, example = isinstance(value, bool), "true or false", True
    elif hint is int:
        ok, want = _positive_int(value), "a positive integer"
        example = default if _positive_int(default) else 2
    elif origin in (list, tuple, collections.abc.Sequence) and choices[:1] == (int,):
        ok = isinstance(value, (list, tuple)) and all(_positive_int(v) for v in value)
        want, example = "a JSON list of positive integers", [16, 32, 64]
    else:
        return
    if not ok:
        text = example if isinstance(example, str) else json.dumps(example, separators=(",", ":"))
        raise UserError(f"{model}: {key} must be {want}, got {value!r} (e.g. --model-arg '{key}={text}')")


def register_model(fn: Builder | None = None, *, input_size: tuple[int, int, int] = IMAGENET_INPUT,
                   min_size: int = 8) -> Any:
    """Register a builder under its function name; use bare or as ``@register_model(input_size=...)``."""

    def add(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        params = inspect.signature(builder).parameters
        if not all(k in params and params[k].kind is params[k].KEYWORD_ONLY for k in COMMON):
            raise TypeError(f"{name}: a builder takes keyword-only num_classes and in_chans")
        _REGISTRY[name] = ModelInfo(name, builder, input_size, min_size)
        return builder

    return add(fn) if fn is not None else add


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names matching the shell-style ``pattern`` (e.g. ``"resnet*"``), in
    registration order: ImageNet nets, CIFAR nets, then the simple nets."""
    if pattern is None:
        return list(_REGISTRY)
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern.lower())]


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name is a UserError naming the closest ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"unknown model {name!r}; {hint}`resnetkit models` lists them all")


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    ``in_chans`` None takes the builder's default: 3, and 1 for d2l_resnet18 (the book's
    Fashion-MNIST). ``num_classes`` None takes the builder's default: 1000 for the ImageNet nets, 10 for the
    CIFAR and simple nets (the datasets their papers report); 0 gives no classifier, and the
    model returns pooled features. ``kwargs`` are the builder's options
    (``model_info(name).options``), e.g. ``small_input=True`` or ``shortcut_type="B"``, and the
    head options of every model: ``global_pool``, ``drop_rate``, ``features_only``
    (see :mod:`resnetkit.models.heads`).
    """
    info = model_info(name)
    options = info.options
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        takes = ", ".join(options) or "no options besides num_classes and in_chans"
        raise UserError(f"{name} does not take {', '.join(unknown)}; it takes {takes}")
    params = inspect.signature(info.builder).parameters
    for key, value in kwargs.items():
        _check_value(name, key, options[key], value, params[key].default if key in params else None)
    if in_chans is not None:
        if not _positive_int(in_chans):
            raise UserError(f"{name}: in_chans must be a positive integer, got {in_chans!r}")
        kwargs["in_chans"] = in_chans
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise UserError(f"{name}: num_classes must be 0 (pooled features, no classifier) or a "
                            f"positive integer, got {num_classes!r}")
        kwargs["num_classes"] = num_classes
    return info.builder(**kwargs)


def describe(name: str) -> dict[str, Any]:
    """Name, parameter count at the builder's default classes, the family's own options (every
    model also takes the head options) and description."""
    info = model_info(name)
    with torch.device("meta"):  # shapes only: no memory, no initialization
        model = create_model(name)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "num_classes": info.num_classes, "input_size": list(info.input_size),
            "options": info.own_options, "description": info.description}
