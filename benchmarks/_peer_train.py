"""One peer's training run, in a process of its own (benchmarks/peers.py starts it and times it).

    python benchmarks/_peer_train.py fastai --arrays DATA.npz --seed 0 --budget 180 --result R.json

Each peer trains the way its documentation teaches, with the settings an expert user of that
tool would pick for 28-32 px images on a CPU under a wall-time budget:

- **fastai** 2.8: ``Learner(dls, xresnet18(c_in, n_out=10), loss_func=LabelSmoothingCrossEntropy(),
  metrics=accuracy)`` + ``fit_one_cycle(E, lr_max=1e-2)``, batch 256. fastai's own from-scratch
  ResNet (the one its Imagenette examples train), its default optimizer (Adam, decoupled wd 0.01)
  and its one-cycle policy at the lr its lr finder usually points to for this net and batch;
  label smoothing as in fastai's Imagenette recipe. No pretrained weights (``vision_learner``
  would download them, and ImageNet features fit 28 px Fashion-MNIST poorly).
- **timm** 1.0: ``create_model("resnet18", num_classes=10, in_chans=C)`` +
  ``create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)`` (Nesterov) +
  ``create_scheduler_v2(sched="cosine", step_on_epochs=False)`` stepped per update in the loop
  of timm's train.py (``step_update`` per batch, ``step`` per epoch), batch 128, timm's
  ``LabelSmoothingCrossEntropy(0.1)``: the classic CIFAR SGD recipe with timm's per-update
  cosine, on timm's most used small ResNet.
- **Keras** 3 on its torch backend: the ResNet v1 for CIFAR-10 of the Keras examples (depth 20,
  widths 16/32/64, ``he_normal``, BatchNorm), ``RandomFlip`` + ``RandomTranslation`` layers,
  ``SGD(CosineDecay(0.1, warmup), momentum=0.9, nesterov=True, weight_decay=5e-4)``,
  ``CategoricalCrossentropy(label_smoothing=0.1)``, ``model.fit(batch_size=128)``: the Keras
  example's net with the SGD schedule that fits a short run better than its Adam + step decay.

Data: the same uint8 arrays for every peer (peers.py writes them once from the IDX files or the
JPEG folder), normalised by the training split's per-channel mean and std; fastai and timm get
random flips and 2 px (28 px images) or 4 px (32 px) translations per batch, Keras its layers.

The budget counts the whole process: the run times a few training steps of a copy of the net
(the estimate), then gives its schedule the steps S that fit in what is left: E = ceil(S / an
epoch's batches) epochs of L = S / E batches each, an epoch shorter than a whole one drawing a
random subset of the training images, the one-cycle or cosine over those E x L steps; it
evaluates the test split once, at the end. ``--epochs 1`` trains exactly one whole epoch instead (the one-epoch time and accuracy).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

TARGET = 0.95  # plan to end at 95% of the budget: the step estimate is a few steps long
TAIL_S = 3.0  # the evaluation's set-up and the interpreter's exit
EVAL_SPEEDUP = 3.0  # an inference image costs about a third of a training image (1 forward of 3)
TIMED_STEPS, WARMUP_STEPS = 6, 2  # the speed estimate, on a copy of the net
TOOLS = ("fastai", "timm", "keras")


def process_age() -> float:
    """Seconds since this process started (Linux /proc; else since this module loaded)."""
    try:
        fields = open("/proc/self/stat", encoding="ascii").read().rsplit(")", 1)[1].split()
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _START


_START = time.monotonic()


# ------------------------------------------------------------------ data and plan
def load(path: Path) -> dict[str, np.ndarray]:
    """uint8 images NHWC and int64 labels, with the training split's per-channel mean and std."""
    with np.load(path) as d:
        data = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    x = data["x_train"].reshape(-1, data["x_train"].shape[-1]).astype(np.float64) / 255
    data["mean"], data["std"] = x.mean(0).astype(np.float32), x.std(0).astype(np.float32)
    return data


def normalised_nchw(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> Any:
    import torch

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
    return t.sub_(torch.from_numpy(mean)[:, None, None]).div_(torch.from_numpy(std)[:, None, None])


def shift_px(size: int) -> int:
    return 4 if size >= 32 else 2


def augment(x: Any, pad: int) -> Any:
    """Random horizontal flip and translation by up to ``pad`` px, per image of a batch (NCHW)."""
    import torch

    n, _, h, w = x.shape
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()  # one shift per batch: a slice, not a gather
    return padded[:, :, dy:dy + h, dx:dx + w].contiguous()


def plan(budget: float | None, epochs: int | None, seconds_per_step: float, steps_per_epoch: int,
         test_images: int, images_per_s: float, max_steps: int | None) -> tuple[int, int]:
    """(E epochs, L steps each) for the time left: ``epochs`` whole epochs when given, else the
    S steps that fit before TARGET of the budget (less the test pass and the exit) as
    E = ceil(S / steps_per_epoch) epochs of L = S // E <= steps_per_epoch steps: the share of an
    epoch that fits beyond whole ones is trained, not dropped."""
    if epochs:
        e, length = epochs, steps_per_epoch
    else:
        left = TARGET * budget - process_age() - test_images / (EVAL_SPEEDUP * images_per_s) - TAIL_S
        steps = max(1, int(left / seconds_per_step))
        e = math.ceil(steps / steps_per_epoch)
        length = steps // e
    if max_steps and e * length > max_steps:  # --dry-run's toy cap
        e = min(e, max_steps)
        length = max(1, max_steps // e)
    return e, length


def time_steps(step: Callable[[], None]) -> float:
    """Seconds per training step of ``step`` (WARMUP_STEPS untimed, then TIMED_STEPS)."""
    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    return (time.perf_counter() - start) / TIMED_STEPS


def torch_step_time(model: Any, x: Any, y: Any, bs: int, pad: int) -> float:
    """A copy of ``model`` trained a few plain SGD steps on augmented batches: the step's cost."""
    import torch

    probe = copy.deepcopy(model).train()
    opt = torch.optim.SGD(probe.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        idx = torch.randint(0, len(x), (bs,))
        loss = loss_fn(probe(augment(x[idx], pad)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(step)


# ------------------------------------------------------------------ fastai
def run_fastai(data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    import fastai
    import fastai.callback.progress  # noqa: F401  Learner.no_bar
    import fastai.callback.schedule  # noqa: F401  Learner.fit_one_cycle
    import torch
    from fastai.callback.core import Callback, CancelValidException
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import LabelSmoothingCrossEntropy
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    from fastai.vision.models.xresnet import xresnet18

    set_seed(args.seed, reproducible=False)
    bs, lr = args.batch_size or 256, 1e-2
    x, y = normalised_nchw(data["x_train"], data["mean"], data["std"]), torch.from_numpy(data["y_train"])
    xt, yt = normalised_nchw(data["x_test"], data["mean"], data["std"]), torch.from_numpy(data["y_test"])
    chans, pad = x.shape[1], shift_px(x.shape[-1])
    model = xresnet18(c_in=chans, n_out=10)
    spe = len(x) // bs
    sps = torch_step_time(model, x, y, bs, pad)
    e, length = plan(args.budget, args.epochs, sps, spe, len(xt), bs / sps, args.max_steps)

    class RandomSubsetDL(DataLoader):
        """An epoch of ``n`` random training images (fastai's own takes the first ``n``)."""

        def get_idxs(self) -> list[int]:
            return self.rng.sample(range(len(self.dataset)), self.n)

    class Augment(Callback):
        """Flip and translate each training batch (fastai's batch transforms need TensorImage)."""

        def before_batch(self) -> None:
            if self.training:
                self.learn.xb = (augment(self.xb[0], pad),)

    class NoValidation(Callback):
        """The test split is read once, after fit, not at every epoch's end."""

        def before_validate(self) -> None:
            raise CancelValidException()

    train_dl = RandomSubsetDL(list(zip(x, y)), bs=bs, shuffle=True, drop_last=True, n=length * bs)
    test_dl = DataLoader(list(zip(xt, yt)), bs=512)
    skip = NoValidation()
    learn = Learner(DataLoaders(train_dl, test_dl), model, loss_func=LabelSmoothingCrossEntropy(),
                    metrics=accuracy, cbs=[Augment(), skip])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(e, lr_max=lr)
    learn.remove_cb(skip)
    with learn.no_bar():
        acc = float(learn.validate(dl=test_dl)[1])
    return {"version": fastai.__version__, "epochs_run": e, "steps_per_epoch_run": length,
            "steps_per_epoch": spe, "batch_size": bs, "test_acc": acc,
            "recipe": f"xresnet18, Adam (fastai default), fit_one_cycle lr_max {lr:g}, label smoothing, "
                      f"batch {bs}"}


# ------------------------------------------------------------------ timm
def run_timm(data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    bs, lr = args.batch_size or 128, 0.1
    x, y = normalised_nchw(data["x_train"], data["mean"], data["std"]), torch.from_numpy(data["y_train"])
    xt, yt = normalised_nchw(data["x_test"], data["mean"], data["std"]), torch.from_numpy(data["y_test"])
    chans, pad = x.shape[1], shift_px(x.shape[-1])
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=chans)
    spe = len(x) // bs
    sps = torch_step_time(model, x, y, bs, pad)
    e, length = plan(args.budget, args.epochs, sps, spe, len(xt), bs / sps, args.max_steps)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=lr, weight_decay=5e-4, momentum=0.9)
    # warmup: 3% of the updates (timm counts it in epochs; with step_on_epochs=False, t is updates)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=e, warmup_epochs=0.03 * e,
                                       warmup_lr=lr / 100, step_on_epochs=False, updates_per_epoch=length)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)
    model.train()
    num_updates = 0
    for epoch in range(e):
        order = torch.randperm(len(x))[:length * bs].view(length, bs)
        for idx in order:
            loss = loss_fn(model(augment(x[idx], pad)), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xt), 512):
            correct += int((model(xt[i:i + 512]).argmax(1) == yt[i:i + 512]).sum())
    return {"version": timm.__version__, "epochs_run": e, "steps_per_epoch_run": length,
            "steps_per_epoch": spe, "batch_size": bs, "test_acc": correct / len(xt),
            "recipe": f"resnet18, SGD (Nesterov) lr {lr:g} wd 5e-4, cosine per update, label smoothing 0.1, "
                      f"batch {bs}"}


# ------------------------------------------------------------------ Keras
def keras_resnet20(keras: Any, shape: tuple[int, ...], pad: int) -> Any:
    """ResNet v1, depth 20, of the Keras CIFAR-10 example, with augmentation layers in front."""
    layers = keras.layers

    def conv_bn(x: Any, filters: int, strides: int = 1, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", kernel_initializer="he_normal",
                          kernel_regularizer=None, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu")(x) if relu else x

    inputs = keras.Input(shape=shape)
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomTranslation(pad / shape[0], pad / shape[1], fill_mode="reflect")(x)
    x = conv_bn(x, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage and not block else 1
            y = conv_bn(x, filters, strides)
            y = conv_bn(y, filters, relu=False)
            if strides != 1:
                x = layers.Conv2D(filters, 1, strides=strides, kernel_initializer="he_normal")(x)
            x = layers.Activation("relu")(layers.add([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax", kernel_initializer="he_normal")(x))


def run_keras(data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit(f"Keras runs on {keras.backend.backend()}, not torch: set KERAS_BACKEND=torch")
    keras.utils.set_random_seed(args.seed)
    bs, lr = args.batch_size or 128, 0.1
    x = ((data["x_train"] / 255 - data["mean"]) / data["std"]).astype(np.float32)
    xt = ((data["x_test"] / 255 - data["mean"]) / data["std"]).astype(np.float32)
    y, yt = (keras.utils.to_categorical(v, 10) for v in (data["y_train"], data["y_test"]))
    pad = shift_px(x.shape[1])
    spe = len(x) // bs

    def compiled(schedule: Any) -> Any:
        model = keras_resnet20(keras, x.shape[1:], pad)
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=5e-4)
        model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                      metrics=["accuracy"])
        return model

    probe = compiled(1e-3)  # a throwaway net: its steps give the cost of one

    def step() -> None:
        idx = np.random.randint(0, len(x), bs)
        probe.train_on_batch(x[idx], y[idx])

    sps = time_steps(step)
    del probe
    e, length = plan(args.budget, args.epochs, sps, spe, len(xt), bs / sps, args.max_steps)
    total = e * length
    warm = max(1, round(0.03 * total))
    schedule = keras.optimizers.schedules.CosineDecay(lr / 100, decay_steps=max(1, total - warm),
                                                      warmup_target=lr, warmup_steps=warm)
    model = compiled(schedule)
    if length == spe:  # whole epochs: the arrays, as the Keras guides pass them
        model.fit(x, y, batch_size=bs, epochs=e, shuffle=True, verbose=0)
    else:  # shorter epochs: batches from an endless shuffled stream (an array input runs out)
        model.fit(shuffled_batches(x, y, bs), epochs=e, steps_per_epoch=length, verbose=0)
    acc = float(model.evaluate(xt, yt, batch_size=512, verbose=0, return_dict=True)["accuracy"])
    return {"version": keras.__version__, "epochs_run": e, "steps_per_epoch_run": length,
            "steps_per_epoch": spe, "batch_size": bs, "test_acc": acc,
            "recipe": f"ResNet-20 v1 (Keras example), SGD (Nesterov) lr {lr:g} wd 5e-4, CosineDecay with "
                      f"warmup, label smoothing 0.1, batch {bs}"}


def shuffled_batches(x: np.ndarray, y: np.ndarray, bs: int) -> Any:
    """Batches of a new permutation of the images at every pass, for ever."""
    while True:
        order = np.random.permutation(len(x))
        for i in range(len(x) // bs):
            idx = order[i * bs:(i + 1) * bs]
            yield x[idx], y[idx]


RUNNERS = {"fastai": run_fastai, "timm": run_timm, "keras": run_keras}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=TOOLS)
    p.add_argument("--arrays", type=Path, required=True, help="the .npz peers.py wrote")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=None, help="seconds for this whole process")
    p.add_argument("--epochs", type=int, default=None, help="exactly this many whole epochs, no budget")
    p.add_argument("--max-steps", type=int, default=None, help="cap on the steps (--dry-run's toy runs)")
    p.add_argument("--batch-size", type=int, default=None, help="instead of the recipe's (--dry-run's toy runs)")
    p.add_argument("--result", type=Path, required=True, help="JSON file for the result")
    args = p.parse_args(argv)
    if (args.budget is None) == (args.epochs is None):
        p.error("give one of --budget and --epochs")
    result = RUNNERS[args.tool](load(args.arrays), args)
    steps = result["epochs_run"] * result["steps_per_epoch_run"]
    result.update(tool=args.tool, seed=args.seed, budget_s=args.budget, steps=steps,
                  epochs=steps / result["steps_per_epoch"], seconds_inside=process_age())
    args.result.write_text(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
