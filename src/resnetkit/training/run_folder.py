"""One training per run folder: a lock file held for the whole run.

Two ``resnetkit train --out runs/same`` started together would otherwise both write the folder and
leave one that mixes them (the config of one, the checkpoint of the other, interleaved metrics).
The lock is an ``fcntl.flock`` on ``.train.lock`` in the folder, holding the owner's pid: the
kernel releases it when the process dies, however it dies, so a lock file left by a killed run
is stale and the next run takes it over, saying whose it was.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".train.lock"

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
