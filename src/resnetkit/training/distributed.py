"""Data parallelism: one process per device, started by torchrun, joined by a process group.

``torchrun --nproc-per-node N -m resnetkit train ...`` (or ``resnetkit train --nproc N``, which
runs the same launcher, :mod:`resnetkit.cli.launch`) starts N copies of the trainer. Each reads its rank from the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), joins the
group (nccl on CUDA, gloo on CPU), trains a DistributedDataParallel replica on its shard of every
global batch and takes part in the collectives below; only rank 0 writes files and prints.

Evaluation (the val split each epoch, the test split once at the end) never runs the DDP
wrapper: ranks hold different numbers of samples of the split (an exact partition, no padding
duplicates), so each evaluates its part with the plain module and :func:`gather_eval` puts the
parts together in dataset order.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..steps import EvalOutput

TIMEOUT_ENV = "RESNETKIT_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 300  # rank 0 may write a large checkpoint meanwhile; a hang ends in minutes


class LostPeer(UserError):
    """A collective failed because another process of the group stopped."""


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------ where this process stands
def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 outside a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    return env_rank() == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"${TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return timedelta(seconds=seconds)


def check_batch_size(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly, so the gradient DDP averages is the global batch's."""
    if world_size > 1 and batch_size % world_size:
        low = batch_size - batch_size % world_size
        e_g = f"{low} or {low + world_size}" if low else f"{world_size}"
        raise UserError(f"--batch-size {batch_size} (the global batch) does not split evenly over "
                        f"{world_size} processes; use a multiple of {world_size}, e.g. {e_g}")


def check_nproc_devices(nproc: int, device: torch.device) -> None:
    """One process per GPU, or per CPU core: more would share a device and only slow each other."""
    if nproc <= 1:
        return
    if device.type == "cuda":
        have, what = torch.cuda.device_count(), "GPU(s)"
    else:
        have, what = os.cpu_count() or 1, f"CPU core(s) ({device.type})"
    if nproc > have:
        raise UserError(f"--nproc {nproc}: this machine has {have} {what}, and data-parallel training "
                        f"runs one process per device; use --nproc {have} or fewer")


def checked_nproc(nproc: int, world_size: int, resuming: bool) -> int:
    """The ``nproc`` that a run started as ``world_size`` processes records in its config."""
    if resuming and nproc != world_size:
        raise UserError(f"this run was trained with {nproc} process(es) and is resumed with "
                        f"{world_size}; resume it with --nproc {nproc} (or torchrun --nproc-per-node {nproc})")
    if nproc not in (1, world_size):
        raise UserError(f"--nproc {nproc} but the launcher started {world_size} processes; "
                        f"under torchrun leave --nproc out")
    return world_size


# ------------------------------------------------------------------ the process group
@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Context]:
    """Join the group torchrun's environment describes; leave it on the way out.

    A collective that fails because a peer died (or timed out after ``$RESNETKIT_DIST_TIMEOUT``
    seconds, default 300) becomes :class:`LostPeer`, a one-line message."""
    rank, world, local = env_rank(), launched_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"process {rank} wants GPU {local} but only {torch.cuda.device_count()} "
                            f"are visible; start at most that many processes per machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"data-parallel training runs on CUDA (nccl) or CPU (gloo), not {device.type}; "
                        f"use --device cpu or a CUDA machine")
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout())
    try:
        yield Context(rank, world, local)
    except (dist.DistError, RuntimeError) as e:
        if not _is_peer_failure(e):
            raise
        raise LostPeer(f"process {rank} of {world} lost contact with the others ({_short(e)}); one of "
                       f"them failed or was stopped: see its message") from None
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _is_peer_failure(e: BaseException) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()  # gloo raises plain RuntimeErrors naming its source files
    return any(s in text for s in ("connection closed by peer", "connection reset by peer", "gloo", "nccl"))


def _short(e: BaseException) -> str:
    """The gist of a backend error: its first sentence, without the source location."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0] if str(e).strip() else "")
    return text.split(". ")[0][:160] or type(e).__name__


def rank_device(device: torch.device) -> torch.device:
    """cuda -> this process's GPU (set by :func:`process_group`); other devices unchanged."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


# ------------------------------------------------------------------ the model
def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model``; its constructor copies rank 0's weights to all."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def trainable(model: nn.Module) -> tuple[bool, ...]:
    """Which parameters DDP would synchronise; a change (unfreezing) needs a new wrapper."""
    return tuple(p.requires_grad for p in model.parameters())


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on GPUs, :class:`CPUSyncBatchNorm`
    on CPU (torch's only runs on accelerators). The state_dict keys stay the same."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, CPUSyncBatchNorm):
        return CPUSyncBatchNorm.from_batchnorm(model)
    for name, child in model.named_children():
        new = convert_sync_batchnorm(child, device)
        if new is not child:
            setattr(model, name, new)
    return model


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for gloo on CPU.

    Mean and variance come from two differentiable all-reduces (sums, then squared deviations
    about the global mean), so gradients flow to every rank's inputs exactly as in a single
    process over the whole batch. In eval mode, or outside a group, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "CPUSyncBatchNorm":
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # float64 throughout, as torch's CPU BatchNorm accumulates: sums over N*H*W elements of
        # inputs whose mean is far from 0 lose digits in float32 (1e-5 relative, measured).
        xd = x.double()
        n = all_reduce(torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)).detach()
        mean = all_reduce(xd.sum(dims)) / n
        centered = xd - mean.view(shape)
        var = all_reduce(centered.square().sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
        unbiased = var * n / max(n - 1, 1)  # as BatchNorm's running variance
        self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks that gradients flow through: every rank's loss depends on the sum, so each
    input's gradient is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def broadcast_module(model: nn.Module, src: int = 0, *, buffers_only: bool = False) -> None:
    """Copy rank ``src``'s parameters and buffers (or buffers only) into every rank's ``model``.

    Buffers alone matter before an evaluation: DDP gives every rank rank 0's BatchNorm
    statistics at the start of each forward, but each rank's last forward then moved its own.
    """
    if not is_distributed():
        return
    tensors = list(model.buffers()) if buffers_only else list(model.state_dict().values())
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src)


# ------------------------------------------------------------------ collectives
def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things: a path, the resume state)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks, as a new tensor; ``t`` itself outside a group."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_max(value: int, device: torch.device) -> int:
    if not is_distributed():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (row counts may differ: padded all_gather)."""
    if not is_distributed():
        return t
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([t.shape[0]], device=t.device))
    sizes = [int(c.item()) for c in counts]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def gather_eval(out: EvalOutput, device: torch.device) -> EvalOutput:
    """One EvalOutput for the whole split from each rank's part: summed loss, predictions and
    targets in rank order, which with the loaders' contiguous partition is the dataset order."""
    if not is_distributed():
        return out
    k = all_max(out.top5.shape[1] if out.count else 0, device)
    top5 = out.top5.to(device) if out.count else torch.zeros((0, k), dtype=torch.long, device=device)
    targets = out.targets.to(device=device, dtype=torch.long)
    loss_sum = all_reduce_sum(out.loss_sum.to(device=device, dtype=torch.float64).reshape(1))[0]
    top5, targets = gather_rows(top5), gather_rows(targets)
    return EvalOutput(loss_sum.float(), int(targets.shape[0]), top5, targets)

