"""The training loop and its checkpoint saves; ``train(cfg) -> TrainResult``.

Each other job of a run has its module: the setup (config, data, model, speed setting) in
:mod:`.setup`, the run folder and resume in :mod:`.run_folder`, ``--time-budget`` in
:mod:`.budget`, what a run prints in :mod:`.console`, report.json in :mod:`.run_report`, and
the steps themselves in :mod:`resnetkit.steps`. Per epoch the trainer reads the device twice at
most per ``sync_every`` batches, or per REFRESH_S with a progress bar (progress and the
finite-loss check) and writes, in order: the
best checkpoint (when the validation accuracy improved), the last checkpoint, the metrics line
and the resume state, each atomically. The test split is read once, after the last epoch, on the
checkpoint the validation split chose (:mod:`resnetkit.data.splits`). The resume state carries the metrics history, so a run
killed between two of those writes resumes from the last complete epoch and rewrites
metrics.jsonl to match it.

Data parallelism (:mod:`.distributed`): under torchrun each process runs a Trainer with its
``rank``; ``self.net`` (the DDP wrapper that trains) is kept apart from ``self.model`` (what is
saved and evaluated), only rank 0 writes files and prints, and every number that is logged or
decides something (losses, accuracies, early stop, divergence) is reduced over all ranks first.
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import interpret, probe
from .._io import append_jsonl, write_json_atomic
from ..config import RunConfig
from ..data.progressive import epoch_img_size
from ..errors import UserError
from .. import checkpoint as ckpt
from . import console, distributed, finetune, run_folder, run_report, sampler, tb
from .budget import RunBudget
from .ema import WeightEma
from .grad_norms import GradNormLog
from .mix import Mixer
from .optim import (Plateau, build_optimizer, build_scheduler, current_lr, epoch_steps, param_groups,
                    step_on_metric)
from .recipes import resolve_config
from .setup import Run, as_config, build_run, choose_runtime, recheck_choice
from ..runtime import cpu_threads, resolve_device, resolve_precision, sync
from ..steps import EvalOutput, evaluate_batches, micro_batches, sync_context, train_step

Callback = Callable[["Trainer", dict[str, Any]], None]
SYNC_EVERY = 25  # batches between host reads of the running loss (progress bar, finite check)
# ... and, while a progress bar is shown, at most this many seconds between reads: a slow net's
# 25 batches can take a minute, and a bar that sits still looks hung. The clock is read on the
# host, so a step costs no extra device sync; a read costs one, at most twice a second.
REFRESH_S = 0.5
FIRST_STEPS = 30  # --time-budget refits the epochs after this many steps of epoch 1


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict[str, Any]  # the metrics line of the chosen epoch (highest val accuracy; the
    # last epoch with --val-size 0)
    last_metrics: dict[str, Any]
    history: list[dict[str, Any]]  # one metrics line per epoch, as in metrics.jsonl
    config: RunConfig  # resolved: every recipe value filled in
    report: dict[str, Any]  # report.json
    stopped_early: bool = False
    wall_time_s: float = 0.0
    test_metrics: dict[str, Any] = field(default_factory=dict)  # top1, top5, loss of the one test pass

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / ckpt.BEST


@dataclass
class _Best:
    metrics: dict[str, Any] = field(default_factory=dict)
    bad_evals: int = 0  # evaluations since the last improvement (--early-stop patience)

    def improves(self, record: Mapping[str, Any]) -> bool:
        if not self.metrics:
            return True
        a, b = record, self.metrics
        return (a["val_acc"], -a["val_loss"]) > (b["val_acc"], -b["val_loss"])

    def beats_accuracy(self, record: Mapping[str, Any]) -> bool:
        return not self.metrics or record["val_acc"] > self.metrics["val_acc"]


def train(cfg: RunConfig | Mapping[str, Any] | None = None, *, callbacks: Sequence[Callback] = (),
          verbose: bool = True, source: Any = None, **overrides: Any) -> TrainResult:
    """Train a model; see ``resnetkit train --help`` for every option.

    ``cfg``: a RunConfig, a dict of its fields, or None; keyword overrides win over both, and the
    recipe fills whatever is left unset. ``callbacks`` are called as ``cb(trainer, record)``
    after each epoch, once everything of that epoch is saved. ``source``: data handed over in
    Python (:mod:`resnetkit.training.api` builds it from arrays or a Dataset).
    """
    config, explicit = as_config(cfg, overrides)
    if config.resume:
        config, explicit = run_folder.resume_config(config, explicit)
    world = distributed.launched_world_size()
    if world == 1:
        if config.nproc > 1:
            raise UserError(f"nproc={config.nproc}: data-parallel training runs one process per device; "
                            f"start it with 'resnetkit train --nproc {config.nproc} ...' or "
                            f"'torchrun --nproc-per-node {config.nproc} -m resnetkit train ...'")
        return Trainer(config, explicit=explicit, callbacks=callbacks, verbose=verbose, source=source).fit()
    config = config.replace(nproc=distributed.checked_nproc(config.nproc, world, bool(config.resume)))
    with distributed.process_group(resolve_device(config.device)) as ctx:
        return Trainer(config, explicit=explicit, callbacks=callbacks, verbose=verbose,
                       rank=ctx.rank, world_size=ctx.world_size).fit()


class Trainer(Run):
    """Owns one run: ``Trainer(cfg).fit() -> TrainResult``; what it computes with is its
    :class:`~.setup.Run`, the loop's state is its own."""

    def __init__(self, cfg: RunConfig, *, explicit: Iterable[str] | None = None,
                 callbacks: Sequence[Callback] = (), verbose: bool = True,
                 rank: int = 0, world_size: int = 1, source: Any = None) -> None:
        cfg = resolve_config(cfg, explicit)
        distributed.check_batch_size(cfg.batch_size, world_size)
        device = resolve_device(cfg.device)
        if world_size > 1:  # cuda -> this process's GPU
            device = distributed.rank_device(device)
        super().__init__(cfg, device, resolve_precision(cfg.precision, device), rank=rank, world_size=world_size)
        self.source = source
        self.verbose = verbose and self.is_main
        self.callbacks = list(callbacks)
        # --time-budget fits the epochs of a new run; a resumed run keeps the epochs it recorded
        self.budget = RunBudget.start(self.cfg.time_budget) if self.cfg.time_budget and not self.cfg.resume else None
        self.eval_seconds: list[float] = []  # each evaluation's wall time (--time-budget's costs)
        self.test_interpretation: interpret.Interpretation | None = None  # the test pass, per sample (report.html)
        self.history: list[dict[str, Any]] = []
        self.best = _Best()
        self.start_epoch = 0  # epochs already done (resume)
        self.wall_before = 0.0  # seconds spent before a resume
        self.lock: run_folder.RunFolderLock | None = None  # held on rank 0 for the whole of fit()
        # rank 0's choice: the default folder name carries a timestamp
        self.run_dir = Path(distributed.broadcast_object(
            str(self.cfg.resume or self.cfg.out or run_folder.default_run_dir(self.cfg))))

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        build_run(self, self.source)
        choose_runtime(self)
        model, cfg = self.model, self.cfg
        self.transfer_notes += [n for n in (probe.precision_note(self.precision.name, self.device),) if n]
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(param_groups(model, cfg), cfg)  # + head/backbone
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]  # before a schedule moves them
        if self.budget is not None:
            self.budget.first_fit(self, model)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.sched_steps)
        self.scaler = self.precision.grad_scaler()
        weight = sampler.setup_imbalance(cfg, self.loaders.train, self.spec.num_classes, self.device)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.mix = Mixer(cfg, self.spec.num_classes)  # --mixup / --cutmix; identity when off
        self.ema = WeightEma(model, cfg.ema) if cfg.ema else None
        self.net: nn.Module = self.wrap(model)  # trains; checkpoints always save self.model
        # Evaluation runs the plain module: ranks hold different numbers of eval samples, and
        # DDP's forward would wait for the others (buffer broadcast) on every batch.
        self.eval_net: nn.Module = self.net if self.world_size == 1 else (
            torch.compile(model) if cfg.compile else model)

    # ------------------------------------------------------------------ mid-run: a new length, a new speed
    def restart_schedule(self) -> None:
        """After a new length: config.json records it and the schedule is rebuilt at the
        current step, so it still ends annealed."""
        if self.is_main:
            write_json_atomic(self.run_dir / "config.json", run_folder.saved_config(self))
        if isinstance(self.scheduler, Plateau):  # reads the val loss, not the length
            return
        steps_done = self.scheduler.last_epoch
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr
            group.pop("initial_lr", None)  # so the new schedule starts from the peak values
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.sched_steps)
        with warnings.catch_warnings():  # "scheduler stepped before optimizer": a replay, not a bug
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps_done):
                self.scheduler.step()

    def first_steps_check(self, step: int, since: float, images: int) -> None:
        """After the first steps of epoch 1: check a cached speed, refit from the loop's own images/s."""
        sync(self.device)
        speed = images / max(time.perf_counter() - since, 1e-9)
        recheck_choice(self, speed, self.log)
        if self.budget is not None:
            self.budget.after_first_steps(self, step, speed)

    def wrap(self, model: nn.Module) -> nn.Module:
        net = distributed.wrap_model(model, self.device) if self.world_size > 1 else model
        return torch.compile(net) if self.cfg.compile else net

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        try:
            if self.is_main:  # one training per folder: refused before any data is read or written
                self.lock = run_folder.acquire(self.run_dir)
                self.notes += [self.lock.note] if self.lock.note else []
            with cpu_threads(self.cfg.threads, self.device):
                return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self) -> TrainResult:
        t0 = time.perf_counter()
        self.setup()
        run_folder.start(self)
        if self.cfg.tensorboard and self.is_main:  # after a resume's restore: it purges later epochs
            self.callbacks.insert(0, tb.TensorBoardLog(self.run_dir, self.start_epoch))
        for line in console.header(self):
            self.log(line)
        epoch = self.start_epoch
        try:
            while epoch < self.cfg.epochs and not self.out_of_patience():
                epoch += 1
                self.run_epoch(epoch, t0)
        except KeyboardInterrupt:
            self.log(f"interrupted; continue with: resnetkit train --resume {self.run_dir}")
            raise
        finally:
            # after a failed write (a full disk) the plots' own write error must not hide the first
            failing = sys.exc_info()[1] is not None
            with contextlib.suppress(UserError) if failing else contextlib.nullcontext():
                run_report.plot_curves(self)
        stopped_early = epoch < self.cfg.epochs
        if stopped_early:
            self.log(f"early stop after epoch {epoch}: no better val accuracy in {self.best.bad_evals} "
                     f"evaluations")
        wall = self.wall_before + time.perf_counter() - t0
        report = run_report.write(self, wall)
        if self.budget is not None:
            self.log(self.budget.end_line())
        test = {k: report.get(k) for k in ("top1", "top5", "loss", "num_samples")}
        return TrainResult(self.run_dir, dict(self.best.metrics), dict(self.history[-1]), self.history,
                           self.cfg, report, stopped_early, wall, test)

    def out_of_patience(self) -> bool:
        return bool(self.cfg.early_stop) and self.best.bad_evals >= self.cfg.early_stop

    def run_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        train_seconds = time.perf_counter() - start
        selecting = self.loaders.val is not None  # --val-size 0: nothing is chosen, the last epoch is
        do_eval = selecting and (epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs)
        val = self.timed_evaluate(self.loaders.val).summary() if do_eval else {"loss": None, "acc": None}
        record = {"epoch": epoch, "train_loss": train.pop("train_loss"), "train_acc": train.pop("train_acc"),
                  "val_loss": val["loss"], "val_acc": val["acc"], "lr": train.pop("lr"),
                  "seconds": round(time.perf_counter() - start, 3), **train}
        self.history.append(record)
        step_on_metric(self.scheduler, record)  # --schedule plateau
        # the epoch line's "*": a strictly higher val accuracy; a tie broken by the loss moves
        # the checkpoint but is no new best accuracy
        new_best = do_eval and self.best.beats_accuracy(record)
        improved = do_eval and self.best.improves(record)
        if do_eval:
            self.best.bad_evals = 0 if improved else self.best.bad_evals + 1
        if improved or not selecting:
            self.best.metrics = dict(record)
        self.log(console.format_epoch(record, self.cfg.epochs, new_best, ema=self.ema is not None))
        if self.budget is not None:  # before saving: state.pt then holds the refitted schedule
            self.budget.after_epoch(self, epoch, train_seconds)
        self.save(epoch, record, improved or not selecting, self.wall_before + time.perf_counter() - t0)
        for callback in self.callbacks:
            callback(self, record)
        return record

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        loader = self.loaders.train
        loader.set_epoch(epoch)
        size = self.train_size(epoch)
        before = distributed.trainable(self.model)
        for line in finetune.set_epoch(self.model, self.cfg, epoch, self.fresh_modules):  # --freeze-epochs
            self.log(line)
        if callable(getattr(self.model, "set_epoch", None)):  # schedules inside a model (dy_resnet's temperature)
            self.model.set_epoch(epoch)
        if self.world_size > 1 and distributed.trainable(self.model) != before:
            self.net = self.wrap(self.model)  # DDP synchronises the parameters trainable at its start
        self.net.train()
        zero = torch.zeros((), device=self.device)
        loss_sum, correct, seen = zero.clone(), zero.clone(), 0
        grad_norms = GradNormLog(self.model, self.device) if self.cfg.log_grad_norms else None
        updates = 0  # optimizer steps; --max-steps (or a --time-budget refit) may end the epoch early
        lr = current_lr(self.optimizer)
        last_update = epoch_steps(self.cfg, epoch, self.sched_steps)
        bar = console.progress_bar(self.verbose, epoch, self.cfg.epochs, min(len(loader), last_update * self.cfg.accum_steps))
        every = max(1, min(SYNC_EVERY, len(loader) // 4))
        start = time.perf_counter()
        autocast = self.precision.autocast()
        # --time-budget: the loop's own speed, from the end of step 2 (kernels built) to step
        # check_at (tiny epochs: the epoch's end decides instead)
        # and a cached speed's check against the loop's own (at the size the probe measured)
        recheck = self.choice is not None and self.choice.chosen_by == "cache" and size == self.spec.img_size
        check_at = min(FIRST_STEPS, len(loader) - 1) if (self.budget or recheck) and epoch == 1 else 0
        since = shown = start
        for step, (x, y, share, first, last) in enumerate(micro_batches(loader, self.cfg.accum_steps), 1):
            x, target = self.mix(x, y)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with sync_context(self.net, last):  # --accum-steps: all-reduce once per update
                loss, hits = train_step(self.net, x, target, loss_fn=self.loss_fn, optimizer=self.optimizer,
                                        autocast=autocast, scaler=self.scaler,
                                        before_update=grad_norms.add if grad_norms else None,
                                        clip_grad=self.cfg.clip_grad, loss_scale=share, zero_grad=first,
                                        update=last)
            if last:
                lr = current_lr(self.optimizer)  # the epoch line's: its last update's, not the next one's
                self.scheduler.step()
                if self.ema is not None:  # once per optimizer update
                    self.ema.update(self.model)
                updates += 1
            loss_sum += loss * y.shape[0]
            correct += hits
            seen += y.shape[0]
            if step == 2 and check_at:
                sync(self.device)
                since, seen_before = time.perf_counter(), seen
            elif step == check_at and step > 2:
                self.first_steps_check(step, since, seen - seen_before)
                last_update = epoch_steps(self.cfg, epoch, self.sched_steps)  # it may shorten this epoch
            end = last and updates >= last_update
            # one process only: under DDP the read is an all-reduce, which every rank must join
            due = bar is not None and self.world_size == 1 and time.perf_counter() - shown >= REFRESH_S
            if step % every == 0 or step == len(loader) or end or due:
                self.check_progress(bar, loss_sum, correct, seen, start, epoch, step)
                shown = time.perf_counter()
            if end:  # the epoch's last update: all of them, or where --max-steps cuts the run
                break
        if bar is not None:
            bar.close()
        loss, hits, seen = self.global_sums(loss_sum, correct, seen)
        out = {"train_loss": loss / max(seen, 1), "train_acc": hits / max(seen, 1),
               "images_per_s": round(seen / max(time.perf_counter() - start, 1e-9), 1), "lr": lr,
               **({"img_size": size} if self.cfg.min_img_size else {}),
               **({"steps": updates} if updates < self.sched_steps else {})}
        if grad_norms is not None:
            out["grad_norms"] = grad_norms.means()
        return out

    def train_size(self, epoch: int) -> int:
        """This epoch's training input size (--min-img-size), set on the in-memory loader."""
        size = epoch_img_size(epoch, self.cfg.epochs, self.spec.img_size, self.cfg.min_img_size,
                              self.cfg.progressive_until)
        if self.cfg.min_img_size:
            self.loaders.train.train_size = size
        return size

    @property
    def saved_model(self) -> nn.Module:
        """What is evaluated and saved: the EMA of the weights with --ema, else the weights."""
        return self.ema.module if self.ema is not None else self.model

    def check_progress(self, bar: Any, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                       start: float, epoch: int, step: int) -> None:
        """One host read: stop on a non-finite loss, refresh the progress bar. Under DDP the sums
        are global, so every rank stops at the same batch."""
        loss, hits, seen = self.global_sums(loss_sum, correct, seen)
        if not np.isfinite(loss):
            raise TrainingDiverged(self.diverged_message(epoch, step, loss))
        if bar is not None:
            speed = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"loss {loss / seen:.4f} acc {100 * hits / seen:.2f}% {speed:.0f} img/s",
                                refresh=False)
            bar.update(step - bar.n)

    def global_sums(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
                    ) -> tuple[float, float, int]:
        """(loss sum, correct, samples) over all ranks, in one host read."""
        count = torch.full_like(loss_sum, seen, dtype=torch.float)
        sums = torch.stack([loss_sum.float(), correct.float(), count])
        loss, hits, n = distributed.all_reduce_sum(sums.double() if self.world_size > 1 else sums).tolist()
        return loss, hits, int(n)

    def check_finite(self, epoch: int) -> None:
        """A finite loss can still leave NaN or infinity in a weight or a BatchNorm running_var;
        such weights are never saved over the last good checkpoint. Rank 0's verdict (it saves)
        is every rank's, so all stop together."""
        bad = ckpt.non_finite(self.model.state_dict()) if self.is_main else None
        bad = distributed.broadcast_object(bad)
        if bad:
            what = f"{len(bad)} weight or buffer tensor(s) hold NaN or infinity ({bad[0]}, ...)"
            raise TrainingDiverged(self.diverged_message(epoch, None, what))

    def diverged_message(self, epoch: int, step: int | None, loss: float | str) -> str:
        last = self.run_dir / ckpt.LAST
        saved = ckpt.recorded_epoch(last) if last.is_file() else None  # the file, not the history:
        # an epoch whose weights went non-finite is in the history and was never saved
        kept = (f"the last good checkpoint is {last} (epoch {saved})" if saved is not None
                else "no checkpoint was written yet")
        fp32 = "" if self.precision.name == "fp32" else f" or use --precision fp32 (now {self.precision.name})"
        what = (f"the training loss became {loss} at epoch {epoch}, batch {step}" if step is not None
                else f"after epoch {epoch}, {loss}")
        return f"{what}; {kept}; lower --lr (now {self.cfg.lr:g}){fp32}"

    def timed_evaluate(self, loader: Iterable[Any]) -> EvalOutput:
        start = time.perf_counter()
        out = self.evaluate(loader)
        out.summary()  # waits for the device: the time is the evaluation's
        self.eval_seconds.append(time.perf_counter() - start)
        return out

    def evaluate(self, loader: Iterable[Any], tta: bool | None = None,
                 on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> EvalOutput:
        """Every sample of ``loader`` (the val split during training, the test split once at the
        end), as one process would see them; ``on_batch`` sees this process's batches."""
        distributed.broadcast_module(self.saved_model, buffers_only=True)  # evaluate what rank 0 saves
        net = self.ema.module if self.ema is not None else self.eval_net  # --ema: the average
        out = evaluate_batches(net, loader, autocast=self.precision.autocast(),
                               channels_last=self.channels_last, label_smoothing=self.cfg.label_smoothing,
                               tta=self.tta if (self.cfg.tta if tta is None else tta) else None,
                               on_batch=on_batch)
        return distributed.gather_eval(out, self.device)  # the whole split, as one process sees it

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    # ------------------------------------------------------------------ saving and reporting
    def save(self, epoch: int, record: dict[str, Any], improved: bool, wall: float) -> None:
        self.check_finite(epoch)
        if not self.is_main:
            return
        common = dict(arch=self.cfg.model, model_args=self.model_args, spec=self.spec,
                      config=run_folder.saved_config(self))
        if improved:
            ckpt.save_checkpoint(self.run_dir / ckpt.BEST, self.saved_model, metrics=record, **common)
        ckpt.save_checkpoint(self.run_dir / ckpt.LAST, self.saved_model, metrics=record, **common)
        append_jsonl(self.run_dir / "metrics.jsonl", record)
        ckpt.save_state(self.run_dir / ckpt.STATE, run_folder.state_of(self, epoch, wall))


