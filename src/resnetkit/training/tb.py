"""``--tensorboard``: TensorBoard event files in RUN/tb/, written by an epoch callback.

Per epoch: every loss and accuracy of the metrics line (tags ``loss/train``, ``accuracy/test``,
``accuracy/val``...), the learning rate and the training speed. After the first epoch: a grid
of the first training batch (as the loader gives it, before mixup/cutmix) and the model's graph
where ``torch.jit.trace`` can trace it. Only rank 0 writes. A resumed run purges the events
after its last saved epoch, so the curves show each epoch once.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UserError

INSTALL = "pip install 'resnetkit[tensorboard]' (or pip install tensorboard)"
IMAGES = 32  # images of the first batch shown


def summary_writer(log_dir: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """TensorBoard tags and values of a metrics line: X_loss -> loss/X, X_acc -> accuracy/X."""
    out = {}
    for key, value in record.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "epoch":
            continue
        split, _, kind = key.rpartition("_")
        if kind in ("loss", "acc") and split:
            out[f"{'loss' if kind == 'loss' else 'accuracy'}/{split}"] = float(value)
        elif key in ("lr", "images_per_s", "seconds"):
            out[f"train/{key}"] = float(value)
    return out


class TensorBoardLog:
    """A trainer callback ``(trainer, record)``: see the module's doc."""

    def __init__(self, run_dir: Path, start_epoch: int = 0) -> None:
        self.writer = summary_writer(Path(run_dir) / "tb", start_epoch + 1 if start_epoch else None)

    def __call__(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if not trainer.is_main:
            return
        epoch = int(record["epoch"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, epoch)
        if epoch == 1:
            # the loader's worker seeds and the trace draw from the global generator: keep it as
            # the resume state saved it, so a run with --tensorboard trains as one without
            with torch.random.fork_rng(devices=[]):
                self.first_batch(trainer)
        self.writer.flush()
        if epoch == trainer.cfg.epochs:
            self.writer.close()

    def first_batch(self, trainer: Any) -> None:
        loader = trainer.loaders.train
        loader.set_epoch(1)
        x, _ = next(iter(loader))
        spec = trainer.spec
        mean = torch.tensor(spec.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(spec.std, device=x.device).view(-1, 1, 1)
        self.writer.add_images("train/first_batch", (x[:IMAGES] * std + mean).clamp(0, 1).cpu(), 1)
        self.add_graph(trainer.model, x[:2])

    def add_graph(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        was_training = model.training
        model.eval()  # no BatchNorm statistics are updated by the trace
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
                self.writer.add_graph(model, x)
        except Exception as e:  # noqa: BLE001 - a model that does not trace still gets its scalars
            warnings.warn(f"--tensorboard: the model's graph was not written ({type(e).__name__})")
        finally:
            model.train(was_training)
