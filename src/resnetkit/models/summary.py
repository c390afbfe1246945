"""A per-stage summary of a network, as Keras' ``model.summary()`` and torchinfo print.

Rows: the stem (every top-level child before the first stage), each stage ``layerN`` and every
top-level child after the last one (``avgpool``, ``fc``); with ``depth=2`` each stage is followed
by one row per block; with ``depth=3`` the stem's layers (conv1, bn1, relu, maxpool) follow the
stem row and every layer of each block follows the block's row, as the tutorials print a net
layer by layer. A container that holds the stages (DenseNet's ``features``) is opened: its
children are the top-level rows. Output shapes come from forward hooks on one image; FLOPs from
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix
multiplies only (BatchNorm, ReLU, additions and pooling are left out) and counts a multiply-add
as 2 FLOPs.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError
from ._registry import create_model, model_info

FLOPS_NOTE = "convolutions and linear layers only; a multiply-add counts as 2 FLOPs"


def _top(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level parts in order, with a child that holds the stages opened (qualified names)."""
    stage_ids = {id(m) for _, m in getattr(model, "stages", [])}
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if id(child) not in stage_ids and any(id(m) in stage_ids for m in child.children()):
            out += [(f"{name}.{n}", m) for n, m in child.named_children()]
        else:
            out.append((name, child))
    return out


def _parts(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Top-level rows as (row name, part names): the parts before the first stage grouped under "stem"."""
    stage_ids = {id(m) for _, m in getattr(model, "stages", [])}
    top = _top(model)
    first = next((i for i, (_, m) in enumerate(top) if id(m) in stage_ids), 0)
    parts = [("stem", [n for n, _ in top[:first]])] if first else []
    return parts + [(name, [name]) for name, _ in top[first:]]


def _leaves(prefix: str, module: nn.Module) -> dict[str, nn.Module]:
    """Every module without children inside ``module``, by qualified name."""
    return {f"{prefix}.{n}": m for n, m in module.named_modules() if n and not any(True for _ in m.children())}


def _shape(out: Any) -> list[int]:
    return list(out.shape[1:]) if isinstance(out, torch.Tensor) else []


def _row(name: str, modules: Sequence[nn.Module], shape: list[int], flops: int, depth: int) -> dict[str, Any]:
    params = sum(p.numel() for m in modules for p in m.parameters())
    return {"name": name, "depth": depth, "output_shape": shape, "params": params, "flops": flops}


def _trace(model: nn.Module, input_size: Sequence[int], watched: dict[str, nn.Module]
           ) -> tuple[dict[str, list[int]], dict[str, int], int]:
    """One zero image through ``model`` in eval mode: the output shape of each watched module,
    in the order they ran, FLOPs per module name and the total. The model's mode is restored."""
    shapes: dict[str, list[int]] = {}

    def record(name: str, out: Any) -> None:
        shapes.pop(name, None)  # re-insert: the dict's order is the order the modules ran
        shapes[name] = _shape(out)

    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: record(n, out)) for n, m in watched.items()]
    device = next(model.parameters()).device
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    prefix = type(model).__name__ + "."  # FlopCounterMode names modules "ResNet.layer1.0"
    flops = {k[len(prefix):]: int(sum(v.values())) for k, v in counter.get_flop_counts().items()
             if k.startswith(prefix)}
    return shapes, flops, int(counter.get_total_flops())


Rows = list[tuple[str, list[str]]]  # (depth-2 row, its depth-3 rows)


def _watched(model: nn.Module, depth: int) -> tuple[dict[str, nn.Module], dict[str, Rows]]:
    """The modules to hook for ``depth``, and each top-level part's sub-rows."""
    top = dict(_top(model))
    stage_ids = {id(m) for _, m in getattr(model, "stages", [])}
    watched, subrows = dict(top), {}
    for name, module in top.items():
        if id(module) in stage_ids and depth >= 2:
            subrows[name] = []
            for n, block in module.named_children():
                leaves = _leaves(f"{name}.{n}", block) if depth >= 3 else {}
                watched.update({f"{name}.{n}": block, **leaves})
                subrows[name].append((f"{name}.{n}", list(leaves)))
        elif depth >= 3 and any(True for _ in module.children()):
            leaves = _leaves(name, module)
            watched.update(leaves)
            subrows[name] = [(leaf, []) for leaf in leaves]
    return watched, subrows


def summarize(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), *, depth: int = 1,
              name: str | None = None) -> dict[str, Any]:
    """Rows per top-level part (and per block with ``depth=2``, per layer with ``depth=3``) for
    one input of ``input_size`` (C, H, W), and totals; shapes exclude the batch dimension."""
    watched, subrows = _watched(model, depth)
    shapes, flops, total_flops = _trace(model, input_size, watched)
    ran = list(shapes)
    order = lambda n: ran.index(n) if n in ran else -1  # noqa: E731 - the order the modules (last) ran
    row = lambda n, d: _row(n, [watched[n]], shapes.get(n, []), flops.get(n, 0), d)  # noqa: E731
    rows = []
    for part, names in _parts(model):
        last = max(names, key=order)  # gives the part's output
        rows.append(_row(part, [watched[n] for n in names], shapes.get(last, []),
                         sum(flops.get(n, 0) for n in names), 1))
        subs = [(n, []) for n in names] if depth >= 3 and part == "stem" else subrows.get(part, [])
        for sub, leaves in subs:
            rows += [row(sub, 2), *(row(n, 3) for n in sorted(leaves, key=order))]
    return {
        "model": name or type(model).__name__,
        "input_size": list(input_size),
        "rows": rows,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_flops": total_flops,
        "flops_note": FLOPS_NOTE,
    }


def human(n: float, unit: str = "") -> str:
    """1234567 -> "1.23M"; with ``unit="FLOPs"``: "1.23 MFLOPs"."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{' ' if unit else ''}{prefix}{unit}"
    return f"{n:g}{' ' if unit else ''}{unit}"


def format_summary(d: dict[str, Any]) -> str:
    """An aligned table of ``summarize``'s rows, then the totals in human units."""
    header = ("Part", "Output shape", "Params", "FLOPs")
    table = [header] + [
        ("  " * (r.get("depth", 1) - 1) + r["name"],
         "x".join(map(str, r["output_shape"])) or "-", f"{r['params']:,}", human(r["flops"]))
        for r in d["rows"]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    size = "x".join(map(str, d["input_size"]))
    out = [f"{d['model']}, input {size} (C x H x W, batch of 1)", rule, line(header), rule]
    out += [line(row) for row in table[1:]]
    out += [rule,
            f"Total params:     {d['total_params']:,} ({d['total_params'] / 1e6:.2f}M)",
            f"Trainable params: {d['trainable_params']:,} ({d['trainable_params'] / 1e6:.2f}M)",
            f"Total FLOPs:      {human(d['total_flops'], 'FLOPs')} per image",
            f"                  ({d.get('flops_note', FLOPS_NOTE)})"]
    return "\n".join(out)


def physical_memory() -> int | None:
    """Bytes of memory of this machine; None where the system does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _meta_forward(model: nn.Module, shape: Sequence[int]) -> int:
    """Bytes of the outputs of every leaf module for one batch of ``shape`` (N, C, H, W): what a
    forward pass holds at its peak, at most, before backward. Runs on the meta device: shapes
    only, no memory, milliseconds."""
    total = 0

    def add(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    # an in-place ReLU or an Identity returns its input's memory: not counted twice
    leaves = [m for m in model.modules() if not any(True for _ in m.children())
              and not getattr(m, "inplace", False) and not isinstance(m, nn.Identity)]
    hooks = [m.register_forward_hook(add) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(*shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total


def check_input(name: str, input_size: Sequence[int], *, batch: int = 1, flag: str = "--img-size",
                model_args: dict[str, Any] | None = None, memory: int | None = None) -> int:
    """Refuse, in one line with the numbers, an input the network ``name`` cannot take: smaller
    than its pooling allows (DenseNet-121 halves the image 5 times: 29 px at least) or so large
    that one forward pass of ``batch`` images needs more than ``memory`` bytes (default: this
    machine's). Returns the bytes of that forward pass. Used before a run or a summary builds
    anything."""
    info = model_info(name)
    args = {k: v for k, v in (model_args or {}).items() if k != "features_only"}
    args["in_chans"] = int(input_size[0])
    with torch.device("meta"):
        model = create_model(name, **args)
    model.eval()
    c, h, w = (int(v) for v in input_size)
    try:
        need = _meta_forward(model, (1, c, h, w)) * batch
    except RuntimeError:  # a pooling or kernel larger than its input
        least = _smallest_side(model, c, max(info.min_size, min(h, w) + 1))
        raise UserError(f"{name} takes inputs of at least {least}x{least} px (its stages shrink the image "
                        f"below one pixel); got {h}x{w}: pass {flag} {least} or more") from None
    limit = memory if memory is not None else physical_memory()
    if limit and need > limit:
        raise UserError(f"{name} at {c}x{h}x{w}: one forward pass of {batch} image(s) needs about "
                        f"{need / 2**30:,.1f} GiB of activations, more than the {limit / 2**30:,.1f} GiB "
                        f"of memory here; choose a smaller {flag}" + (" or --batch-size" if batch > 1 else ""))
    return need


def _smallest_side(model: nn.Module, c: int, start: int) -> int:
    side = start
    while side < 4096:
        try:
            _meta_forward(model, (1, c, side, side))
            return side
        except RuntimeError:
            side += 1 if side < 64 else side // 8
    return side
