"""Atomic file writes: a temporary file in the same folder, flush, fsync, os.replace.

Killing the process at any moment leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError

# Writers that are not Python report an OS error inside their message: safetensors' Rust core
# as "Os { code: 28, ..." (older) or "... (os error 28)" (0.4 and later).
_RUST_OS_ERROR = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")
# torch.save's C++ writer drops the OS error: a short write reads "unexpected pos 704 vs 598"
# or "file write failed"; the cause is then found on the disk itself (see os_error_cause).
_TORCH_WRITE_FAILED = re.compile(r"inline_container.*(unexpected pos|file write failed)", re.DOTALL)
LOW_SPACE = 1 << 20  # bytes free below which a failed write is taken for a full disk


def os_error_cause(exc: BaseException, where: str | os.PathLike[str] | None = None) -> str | None:
    """'No space left on device' and the like when ``exc`` is an operating-system failure
    (directly, or wrapped by a writer that is not Python); None for anything else. ``where``:
    the folder written to, asked for its free space when the writer hides the cause."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    match = _RUST_OS_ERROR.search(str(exc))
    if match:
        return os.strerror(int(match.group(1) or match.group(2)))
    if isinstance(exc, RuntimeError) and _TORCH_WRITE_FAILED.search(str(exc)):
        return _disk_cause(where)
    return None


def _disk_cause(where: str | os.PathLike[str] | None) -> str:
    try:
        st = os.statvfs(where or ".")
    except (OSError, AttributeError):  # no statvfs on Windows
        return "the write failed (the disk may be full)"
    if st.f_bavail * st.f_frsize < LOW_SPACE:
        return os.strerror(errno.ENOSPC)
    return "the write failed"


def ensure_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) or say in one line why it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {os.strerror(e.errno or errno.EIO)}; "
                        f"choose a place you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {what} {path}: {os.strerror(errno.EACCES)}; "
                        f"choose a place you can write to")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    An operating-system failure (a read-only place, a full disk) becomes a UserError that names
    the file and the cause; the previous file, if any, is untouched and the message says so."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 less the umask)
    mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # a writer may have replaced the file (safetensors' save_file does): set the mode again
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except Exception as e:  # noqa: BLE001 - only OS failures are translated; the rest re-raise
        if os_error_cause(e, path.parent) is None:
            raise
        raise _write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def _write_error(path: Path, exc: BaseException) -> UserError:
    kept = "the previous file is kept" if path.exists() else "nothing was written"
    return UserError(f"cannot write {path}: {os_error_cause(exc, path.parent)}; {kept}")


def remove_stale_temps(folder: str | os.PathLike[str], names: tuple[str, ...]) -> list[str]:
    """Delete the temporary files that a killed writer left beside ``names`` in ``folder``
    (``.NAME.<random>.tmp``, as :func:`atomic_path` makes them); return what was removed."""
    removed: list[str] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp_path)`` to produce the file, then move it into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line atomically: the whole file is rewritten with the new line added.

    metrics.jsonl holds one line per epoch, so rewriting it is cheap and a crash mid-write
    can never leave a half line behind.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text_atomic(path, old + json.dumps(obj) + "\n")


# What a weights pickle may name: torch's tensor rebuilders and storages, and ordered dicts.
_PLAIN_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")


def pickled_code(path: str | os.PathLike[str], limit: int = 1 << 26) -> list[str]:
    """The callables (``module.name``) other than torch's tensor rebuilders that the pickles of a
    legacy .pt/.pth file name: reading opcodes never runs them. Empty when it names none, or when
    the file is not a readable pickle (a zip-format file is one of torch's, checked by torch)."""
    import io
    import pickletools

    found: list[str] = []
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return found
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # torch's legacy format: several pickles one after another
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "GLOBAL":
                    name = str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = f"{strings[-2]}.{strings[-1]}"
                else:
                    continue
                if not name.startswith(_PLAIN_GLOBALS) and name not in found:
                    found.append(name)
        except Exception:  # noqa: BLE001 - the rest is tensor bytes, or not a pickle at all
            break
    return found


def read_json_dict(path: Path) -> dict[str, Any]:
    """A cache file's JSON object; a missing, unreadable or non-object file counts as empty."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}
