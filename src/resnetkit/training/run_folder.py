"""The run folder: what a new run writes first, what a resumed one reads back, and its lock.

A resumed run continues its folder's config.json unchanged (:func:`resume_config`) from the
state.pt of its last complete epoch (:func:`read_state`, :func:`restore`). One training per run
folder: a lock file held for the whole run. Two ``resnetkit train --out runs/same`` started
together would otherwise both write the folder and leave one that mixes them (the config of one,
the checkpoint of the other, interleaved metrics). The lock is an ``fcntl.flock`` on
``.train.lock`` in the folder, holding the owner's pid: the kernel releases it when the process
dies, however it dies, so a lock file left by a killed run is stale and the next run takes it
over, saying whose it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .. import checkpoint as ckpt
from .. import report_html
from .._io import ensure_dir, remove_stale_temps, write_json_atomic, write_text_atomic
from ..config import RunConfig, json_fits, recorded_config
from ..data.datasets import resolve_data_dir
from ..errors import UserError, first_line
from . import distributed

LOCK_NAME = ".train.lock"
# Changing these while resuming cannot change the numbers, only where and how fast they come.
# Precision and memory format too: a run probed on one CPU may continue on another.
RESUME_MAY_CHANGE = ("device", "workers", "data_dir", "download", "resume", "precision", "channels_last",
                     "reprobe")
# Everything the trainer writes into a run folder atomically (their temp files are .NAME.*.tmp).
RUN_FILES = (ckpt.BEST, ckpt.LAST, ckpt.STATE, "metrics.jsonl", "config.json", "classes.json",
             "class_indices.json", "report.json", "report.html", "curves.png", "confusion.png",
             "grad_norms.png")

try:
    import fcntl
except ImportError:  # Windows: no flock; one run per folder is then not enforced
    fcntl = None  # type: ignore[assignment]


class RunFolderLock:
    """Held by the process training in ``folder``; :meth:`release` ends it and removes the file."""

    def __init__(self, folder: Path, fd: int | None, note: str | None, created: bool = False) -> None:
        self.folder, self.fd, self.note, self.created = folder, fd, note, created

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def release(self) -> None:
        if self.fd is None:
            return
        # unlink while still holding the lock: a waiting opener then finds a new inode (acquire checks)
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
        if self.created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                self.folder.rmdir()


def acquire(folder: str | os.PathLike[str]) -> RunFolderLock:
    """Lock ``folder`` (created if missing, and removed again on release if still empty) for this
    process, or refuse in one line when another live process trains there. Writes nothing else
    into the folder."""
    folder = Path(folder)
    if fcntl is None:
        return RunFolderLock(folder, None, None)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"run folder (--out) {folder} is a file, not a folder; choose another path")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder (--out) {folder}: {os.strerror(e.errno or 5)}; "
                        f"choose a place you can write to") from None
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock run folder (--out) {folder}: {os.strerror(e.errno or 5)}; "
                            f"choose a place you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f"pid {owner}" if owner else "another process"
            raise UserError(f"{folder} is in use by another training ({who}); choose another --out") from None
        # the owner may have removed the file between our open and our lock: lock the file that is there
        if _same_file(fd, path):
            break
        os.close(fd)
    previous = _read_pid(fd)
    note = None
    if previous and previous != os.getpid():
        note = (f"{folder}: took over the lock left by pid {previous}, which is no longer running "
                f"(a killed run)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunFolderLock(folder, fd, note, created)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def resume_config(cfg: RunConfig, explicit: set[str] | None) -> tuple[RunConfig, set[str]]:
    """The saved config of the run folder ``cfg.resume``; a resumed run continues it unchanged."""
    run_dir = Path(cfg.resume)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "folder not found"
        raise UserError(f"--resume {run_dir}: {what}; pass the run folder (--out) of an earlier 'resnetkit train'")
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.json there; pass the folder of an earlier run")
    saved = recorded_config(read_run_config(path))
    explicit = explicit if explicit is not None else set()
    changed = sorted(k for k in explicit - set(RESUME_MAY_CHANGE)
                     if getattr(cfg, k) != getattr(saved, k))
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UserError(f"--resume continues {run_dir} with its saved config, so {flags} cannot change; "
                        f"to train differently start a new run with --config {path} --out NEW_DIR")
    keep = {k: getattr(cfg, k) for k in RESUME_MAY_CHANGE if k in explicit}
    resolved = saved.replace(**{**keep, "out": str(run_dir), "resume": str(run_dir)})
    return resolved, {f.name for f in dataclasses.fields(RunConfig)}


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's config.json, refused in one line when it is not what a run writes: a resumed run
    must continue with exactly the values it started with, none dropped or misread."""
    damaged = "the run cannot be continued as it was configured; repair the file or start a new run with another --out"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"--resume: {path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                        f"{e.msg}); {damaged}") from None
    except (OSError, ValueError) as e:  # unreadable, or not UTF-8 text
        raise UserError(f"--resume: cannot read {path} ({first_line(e)}); {damaged}") from None
    if not isinstance(data, dict):
        raise UserError(f"--resume: {path} holds a JSON {type(data).__name__}, not an object of "
                        f"config keys; {damaged}")
    hints = typing.get_type_hints(RunConfig)
    unknown = sorted(k for k in data if k not in hints)
    wrong = [f"{k}={v!r:.40}" for k, v in data.items() if k in hints and not json_fits(v, hints[k])]
    if unknown or wrong:
        what = "; ".join(([f"unknown key(s) {', '.join(unknown)} (another resnetkit version wrote it, or "
                           f"it was edited)"] if unknown else []) +
                         ([f"wrong type(s): {', '.join(wrong)}"] if wrong else []))
        raise UserError(f"--resume: {path} has {what}; {damaged}")
    return data


def line_epoch(line: str) -> int | None:
    """The epoch of a metrics.jsonl line; None when the line is not one."""
    try:
        epoch = json.loads(line).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<dataset>-<model>-<timestamp>, with a -2, -3... suffix if that exists already."""
    base = Path("runs") / f"{cfg.dataset}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def start(t: Any) -> None:
    """A new run folder with config.json and classes.json, or the state of a resumed one."""
    if t.cfg.resume:
        if t.is_main:
            remove_stale_temps(t.run_dir, RUN_FILES)  # left by the kill being resumed from
        state = read_state(t)
        if state is not None:
            restore(t, state)
            return
        # killed before the end of the first epoch: nothing to continue, start over in place
        if t.is_main:
            (t.run_dir / "metrics.jsonl").unlink(missing_ok=True)
    elif t.is_main and any((t.run_dir / f).exists() for f in (ckpt.STATE, "metrics.jsonl")):
        raise UserError(f"{t.run_dir} already holds a run; continue it with --resume "
                        f"{t.run_dir} or choose another --out")
    if t.is_main:
        ensure_dir(t.run_dir, "run folder (--out)")
        remove_stale_temps(t.run_dir, RUN_FILES)  # left by a kill mid-write
        write_json_atomic(t.run_dir / "config.json", saved_config(t))
        report_html.write_class_files(t.run_dir, t.spec.classes)


def saved_config(t: Any) -> dict[str, Any]:
    """The config as config.json and the checkpoints record it: where the run lives, not how
    this process was started (a resumed run records the same config as an uninterrupted one).
    Precision and memory format are recorded as resolved: evaluate and resume compute as this
    run did."""
    cfg = t.cfg.replace(out=str(t.run_dir), resume=None, precision=t.precision.name,
                           channels_last=t.channels_last)
    if cfg.dataset != "digits" and t.source is None:  # where the data was, for evaluate and export
        cfg = cfg.replace(data_dir=str(resolve_data_dir(cfg.data_dir).resolve()))
    return cfg.to_dict()


def read_state(t: Any) -> dict[str, Any] | None:
    """state.pt as rank 0 reads it, on every rank (other machines need not see the folder);
    None for a run killed before its first epoch was saved, which starts over."""
    path = t.run_dir / ckpt.STATE
    state = None
    if t.is_main and path.exists():
        state = ckpt.load_state(path)
        check_state(t, state, path)
    elif t.is_main:
        check_nothing_trained(t.run_dir)
        t.log(f"--resume {t.run_dir}: no epoch of it was saved (no {ckpt.STATE}); starting over "
              f"from epoch 1")
    return distributed.broadcast_object(state)


def check_state(t: Any, state: Mapping[str, Any], path: Path) -> None:
    """The entries restore() reads, and weights of this run's network: a state.pt copied
    from another run would otherwise fail half way through restoring."""
    missing = [k for k in ("optimizer", "scheduler", "rng", "best", "bad_evals", "history")
               if k not in state]
    want = t.model.state_dict()
    got = state["model"] if isinstance(state["model"], dict) else {}
    fits = set(got) == set(want) and all(
        isinstance(got[k], torch.Tensor) and got[k].shape == want[k].shape for k in want)
    if missing or not fits:
        why = f"it lacks {', '.join(missing)}" if missing else f"its weights do not fit {t.cfg.model}"
        raise UserError(ckpt.unreadable_state(path, why))


def check_nothing_trained(run_dir: Path) -> None:
    """Without state.pt, resuming starts over, which is right only when no epoch was finished:
    at most epoch 1 was being saved when the run was killed (the state is written last). A
    folder with a later epoch or a report lost its state.pt, and its files are kept."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines() if metrics.is_file() else []
    epochs = [ckpt.recorded_epoch(run_dir / n) for n in (ckpt.BEST, ckpt.LAST)
              if (run_dir / n).is_file()] + [line_epoch(line) for line in lines if line.strip()]
    if (run_dir / "report.json").exists() or any(e is None or e > 1 for e in epochs):
        found = [n for n in (ckpt.BEST, ckpt.LAST, "metrics.jsonl", "report.json")
                 if (run_dir / n).is_file()]
        raise UserError(f"--resume {run_dir}: its {ckpt.STATE} is missing, so the run cannot be "
                        f"continued, and starting over would overwrite its {', '.join(found)}; "
                        f"start a new run with another --out (--config {run_dir / 'config.json'} "
                        f"trains it the same way)")


def state_of(t: Any, epoch: int, wall: float) -> dict[str, Any]:
    """state.pt after ``epoch`` of the Trainer ``t``: all that :func:`restore` reads back."""
    return {"epoch": epoch, "model": ckpt.model_tensors(t.model),
            "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict() if t.scaler else None, "rng": rng_state(),
            "ema": t.ema.state_dict() if t.ema else None,
            "best": t.best.metrics, "bad_evals": t.best.bad_evals, "history": t.history,
            "wall_time_s": wall}


def restore(t: Any, state: Mapping[str, Any]) -> None:
    """The set-up Trainer ``t`` as it was after the epoch ``state`` was saved at."""
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    if t.ema is not None:
        t.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    t.start_epoch = int(state["epoch"])
    t.best.metrics, t.best.bad_evals = dict(state["best"]), int(state["bad_evals"])
    t.history = [dict(h) for h in state["history"]]
    t.wall_before = float(state.get("wall_time_s", 0.0))
    if t.is_main:  # drop lines of an epoch whose state was never saved
        write_text_atomic(t.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in t.history))


def rng_state() -> dict[str, Any]:
    """Every global generator, in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
