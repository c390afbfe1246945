"""``--dataset csv --data-dir labels.csv``: image files listed in a CSV with their labels.

The CSV has a header; ``path`` and ``label`` columns (``--columns`` renames them) and an optional
``split`` column of ``train``, ``val`` or ``test`` (``valid``/``validation`` read as val; an
empty cell as train). Paths are relative to the CSV's folder (absolute ones are kept), as
fastai's ``from_csv`` and Kaggle's label files have them. The listing becomes an image-folder
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


def read_rows(path: Path, columns: tuple[str, str, str]) -> tuple[list[tuple[int, str, str, str]], list[str]]:
    """(line, path, label, split) of the good rows and "line N: reason" of the bad ones."""
    path_col, label_col, split_col = columns
    rows, bad = [], []
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
                reason = _row_problem(path.parent, file, label, split)
                if reason:
                    bad.append(f"line {line}: {reason}")
                else:
                    rows.append((line, file, label, SPLIT_NAMES[split]))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read the CSV {path}: {e}") from None
    return rows, bad


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
    rows, bad = read_rows(path, parse_columns(cfg.columns))
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
