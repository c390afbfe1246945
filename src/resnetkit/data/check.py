"""``resnetkit data check``: what a dataset holds and what is wrong with it, before training.

Per split: image count, class names and counts, image sizes (a histogram of distinct sizes,
width x height, before any resize), per-channel mean and std on the 0..1 scale (over all
pixels, each image weighted equally whatever its size, as the model sees them all at one
size). Problems found: unreadable files, files that are not images, structural problems of
a folder (empty class folder, class missing from a split), exact duplicates within a split
and across splits, class imbalance (largest/smallest class > 1.5), and a training split
whose last batch would hold one sample (size % batch == 1; the loader drops that batch,
since BatchNorm cannot normalize over one sample).

Duplicates compare the sha1 of the decoded pixels after conversion to L or RGB, together with
the image size: two files that decode to the same image are duplicates even when their bytes
differ (another encoder, metadata), and re-encoding noise of a lossy format (JPEG) is not
mistaken for a copy. Problems are reported, never raised; a missing dataset is a UserError.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..config import RunConfig
from ..errors import UserError
from ..specs import DatasetSpec
from .datasets import ArraySplit
from .decode import default_workers
from .folders import FolderIndex, FolderSplit
from .loaders import _load_array, _locate, _Plan, given_data, layout
from .splits import folder_splits
from .transforms import ImageReadError, load_image, to_mode

IMBALANCE_RATIO = 1.5
HASH_NOTE = "sha1 of the decoded pixels after conversion to L/RGB, with the image size"
MAX_EXAMPLES = 5


class _Stats:
    """Running per-split numbers: counts, sizes, channel sums, pixel hashes."""

    def __init__(self, split: str, classes: Sequence[str], in_chans: int) -> None:
        self.split, self.classes = split, classes
        self.counts = [0] * len(classes)
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.sum = np.zeros(in_chans)
        self.sumsq = np.zeros(in_chans)
        self.images = 0  # images accumulated in sum / sumsq
        self.hashes: dict[str, list[tuple[str, int]]] = defaultdict(list)  # sha1 -> [(id, label)]
        self.unreadable: list[str] = []
        self.not_images: list[str] = []

    def add(self, ident: str, label: int, size: tuple[int, int], digest: str, s: np.ndarray,
            sq: np.ndarray, npix: int) -> None:
        self.counts[label] += 1
        self.sizes[size] += 1
        # each image weighs the same whatever its size (models see them all at one size)
        self.sum += s / npix
        self.sumsq += sq / npix
        self.images += 1
        self.hashes[digest].append((ident, label))

    def summary(self) -> dict[str, Any]:
        n = sum(self.counts)
        mean = self.sum / max(self.images, 1)
        std = np.sqrt(np.maximum(self.sumsq / max(self.images, 1) - mean**2, 0.0))
        by_area = sorted(self.sizes, key=lambda wh: (wh[0] * wh[1], wh))
        return {
            "images": n,
            "classes": dict(zip(self.classes, self.counts)),
            "sizes": {f"{w}x{h}": c for (w, h), c in self.sizes.most_common()},
            "size_min": f"{by_area[0][0]}x{by_area[0][1]}" if by_area else None,
            "size_max": f"{by_area[-1][0]}x{by_area[-1][1]}" if by_area else None,
            "mean": [round(float(v), 4) for v in mean],
            "std": [round(float(v), 4) for v in std],
            "unreadable": len(self.unreadable),
            "not_images": len(self.not_images),
        }


def check_dataset(dataset: str, data_dir: str | None = None, batch_size: int | None = None, *,
                  val_fraction: float | None = None, seed: int = 0, workers: int | None = None,
                  keys: str | None = None, classes: str | None = None, columns: str | None = None,
                  source: Any = None) -> dict[str, Any]:
    """Inspect a dataset's splits as the loaders see them; return the report as a dict.
    ``keys``, ``classes``, ``columns``: as the train flags (arrays, csv); ``source``: data handed
    over in Python (:func:`resnetkit.data.python.as_source`)."""
    cfg = RunConfig(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, seed=seed,
                    batch_size=batch_size, workers=workers, keys=keys, classes=classes, columns=columns)
    preset, source = given_data(cfg, source)
    bs = batch_size or preset.batch_size
    if bs < 1:
        raise UserError(f"--batch-size must be positive, got {bs}")
    kind, root, index, classes = _locate(cfg, preset, None, tolerant=True, source=source)
    in_chans = preset.in_chans
    stats: dict[str, _Stats] = {}
    problems: list[dict[str, Any]] = []
    parts = _folder_parts(index, cfg) if index is not None else {}
    names = list(parts) or ["train", "test"]
    for split in names:
        st = _Stats(split, classes, in_chans)
        if index is not None:
            _scan_folder_split(parts[split], st, in_chans, workers)
        else:
            spec = DatasetSpec(dataset, classes, in_chans, preset.img_size, preset.mean, preset.std)
            plan = _Plan(preset, spec, "none", bs, root, kind, source=source)
            _scan_array_split(_load_array(plan, cfg, split), st)
        stats[split] = st
    if index is not None:
        problems += [_problem("structure", None, msg) for msg in index.problems]
    for st in stats.values():
        problems += _split_problems(st)
    for held in names[1:]:
        problems += _cross_duplicates(stats["train"], stats[held])
    n_train = sum(stats["train"].counts)
    if n_train % bs == 1:
        problems.append(_problem(
            "bn_last_batch", "train",
            f"{n_train} training images % batch size {bs} == 1: the last batch would hold one sample, "
            f"which BatchNorm cannot normalize; the train loader drops it (or pick another --batch-size)"))
    return {
        "dataset": dataset, "source": _source_name(kind, root, source),
        "layout": layout(kind, index, source), "in_chans": in_chans, "batch_size": bs,
        "duplicate_hash": HASH_NOTE,
        "splits": {k: v.summary() for k, v in stats.items()},
        "problems": problems, "ok": not problems,
    }


def _source_name(kind: str, root: Any, source: Any) -> str:
    if source is not None:
        return source.source
    return "sklearn.datasets.load_digits" if kind == "digits" else str(root)


def _folder_parts(index: FolderIndex, cfg: RunConfig) -> dict[str, FolderSplit]:
    """The trees as found; a tree with no val/ or test/ is split as the loaders split it."""
    if index.held_out() or index.problems:
        return {"train": index.train, **dict(index.held_out())}
    fs = folder_splits(index, index.train, cfg, builtin=False)
    return {"train": fs.train, "val": fs.val} if fs.val is not None else {"train": fs.train}


def _problem(kind: str, split: str | None, message: str, examples: list | None = None,
             count: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": kind, "split": split, "message": message}
    if count is not None:
        d["count"] = count
    if examples:
        d["examples"] = examples[:MAX_EXAMPLES]
    return d


def _scan_array_split(data: ArraySplit, st: _Stats) -> None:
    imgs = data.images.numpy()
    n, c, h, w = imgs.shape
    flat = imgs.reshape(n, c, -1).astype(np.float64) / 255.0
    labels = data.labels.tolist()
    head = f"{c}:{w}x{h}:".encode()
    rows = imgs.reshape(n, -1)
    for i in range(n):
        ident = data.ids[i] if data.ids else f"{st.split}[{i}]"
        st.counts[labels[i]] += 1
        st.hashes[hashlib.sha1(head + rows[i].tobytes()).hexdigest()].append((ident, labels[i]))
    st.sizes[(w, h)] += n
    st.sum += flat.mean(axis=2).sum(axis=0)
    st.sumsq += (flat**2).mean(axis=2).sum(axis=0)
    st.images += n


class _ReadSet(Dataset):
    def __init__(self, split: FolderSplit, in_chans: int) -> None:
        self.split, self.in_chans = split, in_chans

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple:
        try:
            img = to_mode(load_image(self.split.path(i)), self.in_chans)
        except ImageReadError as e:
            return i, None, e.reason
        a = np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], -1)
        f = a.reshape(-1, a.shape[2]).astype(np.float64) / 255.0
        digest = hashlib.sha1(f"{a.shape[2]}:{img.size[0]}x{img.size[1]}:".encode() + a.tobytes()).hexdigest()
        return i, (img.size, digest, f.sum(0), (f**2).sum(0), f.shape[0]), None


def _scan_folder_split(split: FolderSplit, st: _Stats, in_chans: int, workers: int | None) -> None:
    from tqdm.auto import tqdm

    st.not_images = list(split.ignored)
    loader = DataLoader(_ReadSet(split, in_chans), batch_size=64, collate_fn=list,
                        num_workers=default_workers(len(split), workers))
    with tqdm(total=len(split), desc=f"reading {st.split}", unit="img", disable=None, leave=False) as bar:
        for batch in loader:
            for i, res, err in batch:
                if res is None:
                    st.unreadable.append(f"{split.files[i]}: {err}")
                else:
                    st.add(split.files[i], split.labels[i], *res)
            bar.update(len(batch))


def _split_problems(st: _Stats) -> list[dict[str, Any]]:
    out = []
    if st.unreadable:
        out.append(_problem("unreadable", st.split, f"{len(st.unreadable)} unreadable image file(s) "
                            f"(skipped by the loaders, an error with --strict)",
                            st.unreadable, len(st.unreadable)))
    if st.not_images:
        out.append(_problem("not_image", st.split, f"{len(st.not_images)} file(s) without an image "
                            f"extension in class folders (skipped)", st.not_images, len(st.not_images)))
    groups = [g for g in st.hashes.values() if len(g) > 1]
    if groups:
        extra = sum(len(g) - 1 for g in groups)
        conflicting = sum(1 for g in groups if len({lab for _, lab in g}) > 1)
        note = f", {conflicting} of them with different labels" if conflicting else ""
        out.append(_problem("duplicates", st.split,
                            f"{extra} exact duplicate image(s) in {len(groups)} group(s){note}",
                            [[ident for ident, _ in g] for g in groups], extra))
    nonzero = [c for c in st.counts if c > 0]
    empty = [name for name, c in zip(st.classes, st.counts) if c == 0]
    if empty:
        out.append(_problem("empty_class", st.split, f"class(es) with no readable image: {', '.join(empty)}",
                            empty, len(empty)))
    if nonzero and max(nonzero) / min(nonzero) > IMBALANCE_RATIO:
        big = max(range(len(st.counts)), key=lambda k: st.counts[k])
        small = min((k for k in range(len(st.counts)) if st.counts[k]), key=lambda k: st.counts[k])
        out.append(_problem("imbalance", st.split,
                            f"class imbalance: largest class {st.classes[big]} has {st.counts[big]} images, "
                            f"smallest {st.classes[small]} {st.counts[small]} "
                            f"(ratio {st.counts[big] / st.counts[small]:.2f} > {IMBALANCE_RATIO})"))
    return out


def _cross_duplicates(train: _Stats, test: _Stats) -> list[dict[str, Any]]:
    shared = [d for d in test.hashes if d in train.hashes]
    if not shared:
        return []
    n = sum(len(test.hashes[d]) for d in shared)
    examples = [[train.hashes[d][0][0], test.hashes[d][0][0]] for d in shared]
    return [_problem("cross_split_duplicates", test.split,
                     f"{n} held-out image(s) also in the training split (leakage: test accuracy is inflated)",
                     examples, n)]


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of a check report."""
    lines = [f"{report['dataset']}: {report['source']} ({report['layout']})"]
    for split, s in report["splits"].items():
        lines.append(f"  {split}: {s['images']} images, {len(s['classes'])} classes")
        lines.append("    classes: " + ", ".join(f"{k} {v}" for k, v in s["classes"].items()))
        sizes = ", ".join(f"{k} ({v})" for k, v in list(s["sizes"].items())[:6])
        more = f" and {len(s['sizes']) - 6} more sizes" if len(s["sizes"]) > 6 else ""
        lines.append(f"    sizes: {sizes}{more}; min {s['size_min']}, max {s['size_max']}")
        lines.append("    mean " + " ".join(f"{v:.4f}" for v in s["mean"])
                     + "   std " + " ".join(f"{v:.4f}" for v in s["std"]))
    probs = report["problems"]
    lines.append(f"problems ({len(probs)}):" if probs else "no problems found")
    for p in probs:
        where = f"[{p['split']}] " if p.get("split") else ""
        lines.append(f"  - {where}{p['message']}")
        for ex in p.get("examples", []):
            lines.append(f"      {' = '.join(ex) if isinstance(ex, list) else ex}")
    lines.append(f"duplicates compare the {report['duplicate_hash']}")
    return "\n".join(lines)
