"""``--dataset csv --data-dir labels.csv``: image files listed in a CSV with their labels.

The CSV has a header; ``path`` and ``label`` columns (``--columns`` renames them) and an optional
``split`` column of ``train``, ``val`` or ``test`` (``valid``/``validation`` read as val; an
empty cell as train). Paths are relative to the CSV's folder, as fastai's ``from_csv`` and
Kaggle's label files have them, and must stay inside it (no ``..`` out of it, no absolute path
elsewhere) unless ``--allow-outside``. An image listed twice is kept once; one listed with two
labels (or splits) is dropped, with one warning line each (``--strict``: an error). The listing becomes an image-folder
index (:class:`~resnetkit.data.folders.FolderIndex`), so decoding, caching, streaming and the
held-out split follow the image-folder rules: a ``val`` split is the held-out one, else
``test``, else the training rows are split per class by ``--val-fraction`` with ``--seed``.

Bad rows (the file is missing, the label or path is empty, the split is unknown, the label is
not among ``--classes``) are reported with their line numbers and skipped; ``--strict`` makes
them an error. Class order: ``--classes``, else the label names as image-folder names sort.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from ..config import RunConfig
from ..errors import UserError
from ._util import summarize_names, warn
from .arrays import parse_classes
from .folders import FolderIndex, FolderSplit, natural_order

DEFAULT_COLUMNS = ("path", "label", "split")
SPLIT_NAMES = {"train": "train", "": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}


def parse_columns(text: str | None) -> tuple[str, str, str]:
    if not text:
        return DEFAULT_COLUMNS
    names = [c.strip() for c in text.split(",")]
    if len(names) not in (2, 3) or not all(names):
        raise UserError(f"--columns takes PATH,LABEL or PATH,LABEL,SPLIT column names, got {text!r}")
    return (names[0], names[1], names[2] if len(names) == 3 else DEFAULT_COLUMNS[2])


def read_rows(path: Path, columns: tuple[str, str, str], allow_outside: bool = False
              ) -> tuple[list[tuple[int, str, str, str]], list[str], list[str]]:
    """(line, path, label, split) of the good rows, "line N: reason" of the bad ones, and
    "line N: path" of the rows that lead outside the CSV's folder (kept with ``allow_outside``)."""
    path_col, label_col, split_col = columns
    rows, bad, outside = [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in (path_col, label_col) if c not in header]
            if missing:
                raise UserError(f"{path}: no column {' or '.join(missing)} in the header "
                                f"({', '.join(header) or 'empty'}); name them with --columns PATH,LABEL")
            for row in reader:
                if not any((v or "").strip() for v in row.values()):
                    continue  # a blank line
                line = reader.line_num
                file, label = (row.get(path_col) or "").strip(), (row.get(label_col) or "").strip()
                split = (row.get(split_col) or "").strip().lower() if split_col in header else ""
                if file and not allow_outside and not inside(path.parent, file):
                    outside.append(f"line {line}: {file}")  # never read, not even looked at
                    continue
                reason = _row_problem(path.parent, file, label, split)
                if reason:
                    bad.append(f"line {line}: {reason}")
                else:
                    rows.append((line, file, label, SPLIT_NAMES[split]))
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read the CSV {path}: it is not UTF-8 text (a byte "
                        f"0x{e.object[e.start]:02x}); save it as UTF-8 (in Excel: CSV UTF-8; "
                        f"iconv -f latin1 -t utf-8 for a Latin-1 file)") from None
    except (OSError, csv.Error) as e:
        raise UserError(f"cannot read the CSV {path}: {e}") from None
    return rows, bad, outside


def inside(root: Path, file: str) -> bool:
    """Whether the CSV's path ``file`` names a file under ``root``, by the text of the path
    (``..`` and absolute paths), before anything is opened."""
    base = os.path.abspath(root)
    target = os.path.normpath(os.path.join(base, file))
    return os.path.commonpath([base, target]) == base


def check_outside(outside: list[str], path: Path, tolerant: bool, bad: list[str]) -> None:
    """Rows leading outside the CSV's folder: refused (a label file must not make the tool read
    /etc/passwd or another project's images) unless --allow-outside; listed by data check."""
    if not outside:
        return
    if tolerant:
        bad += [f"{row}: outside the CSV's folder (--allow-outside reads it)" for row in outside]
        return
    raise UserError(f"{len(outside)} row(s) of {path} lead outside its folder {path.parent} "
                    f"({summarize_names(outside, 3)}); move the images under it, or pass --allow-outside")


def drop_repeats(rows: list[tuple[int, str, str, str]], path: Path, strict: bool, tolerant: bool,
                 bad: list[str]) -> list[tuple[int, str, str, str]]:
    """One row per image file: a repeated row is dropped (it would weigh the image twice and
    could land in train and val at once), and an image given two labels is dropped altogether
    (no label is guessed). Each kind is one warning line; ``strict`` refuses them."""
    seen: dict[str, list[tuple[int, str, str, str]]] = {}
    for row in rows:
        seen.setdefault(os.path.normpath(row[1]), []).append(row)
    repeats = [f"{f} (lines {', '.join(str(r[0]) for r in rs)})" for f, rs in seen.items()
               if len(rs) > 1 and len({(r[2], r[3]) for r in rs}) == 1]
    clashes = [f"{f} ({', '.join(f'line {r[0]}: {r[2]}' + (f' [{r[3]}]' if r[3] != 'train' else '') for r in rs)})"
               for f, rs in seen.items() if len({(r[2], r[3]) for r in rs}) > 1]
    kinds = [(repeats, "listed more than once", "kept once"),
             (clashes, "given different labels or splits", "dropped: no label is guessed")]
    for found, what, done in kinds:
        if not found:
            continue
        line = f"{len(found)} image(s) of {path} {what}: {summarize_names(found, 3)}"
        if tolerant:
            bad.append(line)
        elif strict:
            raise UserError(f"{line}; fix the CSV or drop --strict")
        else:
            warn(f"{line}; {done} (--strict makes this an error)")
    clashing = {f for f, rs in seen.items() if len({(r[2], r[3]) for r in rs}) > 1}
    return [rs[0] for f, rs in seen.items() if f not in clashing]


def _row_problem(root: Path, file: str, label: str, split: str) -> str | None:
    if not file:
        return "empty path"
    if not label:
        return f"{file}: empty label"
    if split not in SPLIT_NAMES:
        return f"{file}: unknown split {split!r} (train, val or test)"
    if not (root / file).is_file():
        return f"{file}: file not found"
    return None


def index_csv(cfg: RunConfig, *, classes: Sequence[str] | None = None, tolerant: bool = False) -> FolderIndex:
    """The CSV of ``cfg.data_dir`` as train and held-out splits. ``classes`` fixes the class order
    (a checkpoint's); ``tolerant`` lists bad rows in ``.problems`` instead of warning or raising."""
    if not cfg.data_dir:
        raise UserError("--dataset csv needs --data-dir FILE: a CSV with columns path,label[,split]")
    path = Path(cfg.data_dir).expanduser()
    if not path.is_file():
        raise UserError(f"CSV file {path} not found; pass --data-dir labels.csv")
    rows, bad, outside = read_rows(path, parse_columns(cfg.columns), cfg.allow_outside)
    check_outside(outside, path, tolerant, bad)
    rows = drop_repeats(rows, path, cfg.strict, tolerant, bad)
    names = tuple(classes) if classes else parse_classes(cfg.classes)
    if names is not None:
        bad += [f"line {ln}: {f}: label {lab!r} is not among the classes" for ln, f, lab, _ in rows
                if lab not in names]
        rows = [r for r in rows if r[2] in names]
    report_bad_rows(bad, path, cfg.strict, tolerant)
    names = names or tuple(natural_order(sorted({r[2] for r in rows})))
    if len(names) < 2:
        raise UserError(f"{path}: {len(names)} class(es) in its usable rows; a classifier needs at least two")
    splits = {s: _split(path.parent, [r for r in rows if r[3] == s], names) for s in ("train", "val", "test")}
    return _index(path, names, splits, cfg, bad if tolerant else [])


def report_bad_rows(bad: list[str], path: Path, strict: bool, tolerant: bool) -> None:
    if not bad or tolerant:
        return
    if strict:
        raise UserError(f"{len(bad)} bad row(s) in {path}: {summarize_names(bad, 3)}; fix them or drop --strict")
    warn(f"skipped {len(bad)} bad row(s) of {path}: {summarize_names(bad)}; --strict makes this an error")


def _split(root: Path, rows: list[tuple[int, str, str, str]], classes: Sequence[str]) -> FolderSplit:
    index = {c: i for i, c in enumerate(classes)}
    stats = []
    for _, file, _, _ in rows:
        st = os.stat(root / file)
        stats.append((st.st_size, st.st_mtime_ns))
    return FolderSplit(root, [r[1] for r in rows], [index[r[2]] for r in rows], stats)


def _index(path: Path, classes: tuple[str, ...], splits: dict[str, FolderSplit], cfg: RunConfig,
           problems: list[str]) -> FolderIndex:
    """val and test rows as an image folder's val/ and test/ trees (None when absent): the
    validation split is then held out of the training rows as for a folder without val/."""
    if not splits["train"].files:
        raise UserError(f"{path}: no usable training rows")
    held = {s: splits[s] if splits[s].files else None for s in ("val", "test")}
    present = [s for s, v in held.items() if v is not None]
    layout = f"CSV {path.name}" + (f", split column: train and {' and '.join(present)} rows" if present else "")
    return FolderIndex(path.parent, classes, splits["train"], held["val"], held["test"], layout, problems)
