"""``resnetkit.train(...)``: the trainer's entry point, plus data handed over in Python.

``train(data=(x, y), val_data=(xv, yv), test_data=(xt, yt), classes=[...], epochs=5)`` trains
on arrays or tensors as ``--dataset arrays`` does on a file (Keras' ``fit(x, y)``);
``data=`` may also be a ``torch.utils.data.Dataset`` (see :mod:`resnetkit.data.python` for
what ``mean``/``std`` mean there). The run folder and checkpoint are those of any run; the data
itself is not recorded, so ``evaluate`` and ``export`` of such a run need the data passed again
(predict needs nothing: the checkpoint carries classes, size, mean and std).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..config import RunConfig
from ..data.python import as_source
from ..errors import UserError
from .setup import as_config
from .trainer import Callback, TrainResult
from .trainer import train as train_config

DATA_KEYWORDS = ("val_data", "test_data", "classes", "mean", "std")


def train(cfg: RunConfig | Mapping[str, Any] | None = None, *, data: Any = None, val_data: Any = None,
          test_data: Any = None, classes: Sequence[str] | None = None,
          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          callbacks: Sequence[Callback] = (), verbose: bool = True, **overrides: Any) -> TrainResult:
    """Train a model; see ``resnetkit train --help`` for every option.

    ``cfg``: a RunConfig, a dict of its fields, or None; keyword overrides win over both, and the
    recipe fills whatever is left unset. ``callbacks`` are called as ``cb(trainer, record)``
    after each epoch, once everything of that epoch is saved.

    ``data``: images and labels in memory instead of a dataset name: an ``(x, y)`` pair of NumPy
    arrays or tensors (NHWC or NCHW, uint8 or float pixels; integer, text or one-hot labels), or
    a torch Dataset of ``(image, label)``. ``val_data``/``test_data``: held-out data of the same
    kind (without either, ``val_fraction`` of ``data`` is held out). ``classes``: names, in label
    order. ``mean``/``std``: for arrays, the normalization to use instead of the data's own; for
    a Dataset, the normalization it already applies (else it must return pixels, and they are
    computed).
    """
    given = {k: v for k, v in zip(DATA_KEYWORDS, (val_data, test_data, classes, mean, std)) if v is not None}
    if data is None:
        if given:
            raise UserError(f"{', '.join(given)} go(es) with data=: pass the training images as data=(x, y)")
        return train_config(cfg, callbacks=callbacks, verbose=verbose, **overrides)
    config, _ = as_config(cfg, overrides)
    if config.dataset not in (RunConfig().dataset, "arrays") or config.data_dir:
        raise UserError(f"data= replaces dataset={config.dataset!r} and data_dir; pass one or the other")
    if config.nproc > 1:
        raise UserError("data= trains in this process; for nproc > 1 save the arrays to a .npz file and "
                        "run 'resnetkit train --dataset arrays --data-dir FILE --nproc N'")
    fraction = config.val_fraction if config.val_fraction is not None else 0.2
    source = as_source(data, val_data, test_data, classes=classes, mean=mean, std=std,
                       val_fraction=fraction, seed=config.seed)
    return train_config(cfg, callbacks=callbacks, verbose=verbose, source=source,
                        **{**overrides, "dataset": "arrays"})
