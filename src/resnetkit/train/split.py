"""Data parallel over CPU cores inside one process: ``--batch-split N``.

A small network's operators are too small to keep two cores busy: on a 2-core Xeon the fast
recipe's step ran its convolutions at a third of the matmul peak and gained 1.0-1.6x from a
second intra-op thread, while two single-threaded copies of the step, one per core, ran nearly
twice one (BENCHMARKS.md, throughput). So the batch is cut into N chunks, and each chunk's
forward and backward runs on its own thread, with one intra-op thread each, through its own
replica of the model; the main thread trains the first chunk on the model itself, then sums
the replicas' gradients into the model's in a fixed order (the step stays deterministic, unless
the model draws random numbers, as dropout does: the threads then share torch's generator in no
fixed order) and the optimizer updates the model as usual. BatchNorm normalises each chunk with the chunk's own
statistics, as N processes of ``--nproc N`` without ``--sync-bn`` do (ghost batch norm, Hoffer
et al. 2017, arXiv:1705.08741); the running statistics are the mean of the chunks'. The probe
(resnetkit.probe) times it against the whole batch on one thread pool and keeps the faster.
"""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ContextManager

import torch
from torch import nn

MIN_CHUNK = 32  # images per chunk: smaller ones make BatchNorm's statistics noisy


def can_split(device: torch.device, threads: int, batch_size: int, *, compile: bool, world_size: int = 1) -> int:
    """The split the probe may try here (the thread count), or 1: only on a CPU with >= 2
    threads, in one process, without torch.compile, and with >= MIN_CHUNK images per chunk."""
    if device.type != "cpu" or compile or world_size > 1 or threads < 2:
        return 1
    return threads if batch_size // threads >= MIN_CHUNK else 1


def _one_thread() -> None:
    torch.get_num_threads()  # torch sets a new thread's count from the global one on first use
    torch.set_num_threads(1)  # OpenMP's count is per thread: this worker's only


class BatchSplit:
    """Forward and backward of a batch in ``n`` chunks on ``n`` threads (see the module doc)."""

    def __init__(self, model: nn.Module, n: int, autocast: Callable[[], ContextManager[object]]) -> None:
        if n < 2:
            raise ValueError("a batch split needs n >= 2")
        self.model, self.n, self.autocast = model, n, autocast
        self.pool = ThreadPoolExecutor(n - 1, thread_name_prefix="resnetkit-split", initializer=_one_thread)
        self.replicas: list[nn.Module] = []
        self.refresh()

    def refresh(self) -> None:
        """New replicas from the model: call after anything but its tensors changed (train/eval
        modes, frozen parameters, a model's set_epoch); tensors are copied before every step."""
        self.replicas = [copy.deepcopy(self.model) for _ in range(self.n - 1)]
        for r in self.replicas:
            for p in r.parameters():
                p.grad = None
        self._norms = [[m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        and m.track_running_stats] for net in (self.model, *self.replicas)]

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    @torch.no_grad()
    def _copy_in(self) -> None:
        params, buffers = list(self.model.parameters()), list(self.model.buffers())
        for r in self.replicas:
            for mine, theirs in ((list(r.parameters()), params), (list(r.buffers()), buffers)):
                if mine:
                    torch._foreach_copy_(mine, theirs)

    @torch.no_grad()
    def _gather(self) -> None:
        """Replica gradients into the model's, in replica order; running statistics averaged."""
        for r in self.replicas:
            for p, q in zip(self.model.parameters(), r.parameters()):
                if q.grad is None:
                    continue
                if p.grad is None:
                    p.grad = q.grad
                else:
                    p.grad.add_(q.grad)
                q.grad = None
        for mods in zip(*self._norms):
            if not mods[0].training:  # frozen (fine-tuning): its statistics did not move
                continue
            for name in ("running_mean", "running_var"):
                tensors = [getattr(m, name) for m in mods]
                if tensors[0] is not None:
                    tensors[0].copy_(torch.stack(tensors).mean(0))

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
                         loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward of ``loss_fn(model(x), y) * loss_scale`` as the whole batch would give it
        (up to BatchNorm's per-chunk statistics); returns (the batch's mean loss, its logits), detached."""
        self._copy_in()
        xs, ys = x.tensor_split(self.n), y.tensor_split(self.n)
        shares = chunk_shares(ys, y, loss_fn)

        def chunk(net: nn.Module, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            with self.autocast():
                logits = net(xs[i])
            loss = loss_fn(logits.float(), ys[i]) * shares[i]
            (loss * loss_scale).backward()
            return loss.detach(), logits.detach()

        futures = [self.pool.submit(chunk, r, i) for i, r in enumerate(self.replicas, 1)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the main thread trains chunk 0 beside the workers
        try:
            results = [chunk(self.model, 0)]
        finally:
            torch.set_num_threads(threads)
            results += [f.result() for f in futures]  # waits for them even if chunk 0 failed
        self._gather()
        return torch.stack([loss for loss, _ in results]).sum(), torch.cat([lg for _, lg in results])


def chunk_shares(ys: tuple[torch.Tensor, ...], y: torch.Tensor, loss_fn: nn.Module) -> list[float]:
    """Each chunk's weight in the batch's mean loss: its share of the images, or with class
    weights and class-index targets its share of the summed weights (cross-entropy's mean)."""
    weight = getattr(loss_fn, "weight", None)
    if weight is not None and y.ndim == 1:
        sums = [float(weight[c].sum()) for c in ys]
    else:
        sums = [float(c.shape[0]) for c in ys]
    total = sum(sums)
    return [s / total for s in sums]
