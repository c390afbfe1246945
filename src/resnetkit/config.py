"""RunConfig: one frozen dataclass that the CLI, the checkpoint and the run folder share.

The keys are the long flag names of ``resnetkit train`` with dashes as underscores, so a
``--config FILE`` (YAML or JSON) uses exactly the same names as the command line. A value of
``None`` means "let the dataset preset or the recipe decide"; the resolved config, with every
value filled in, is what lands in config.json and in the checkpoint.

Each field's metadata (:func:`flag`: group, help, metavar, choices) makes its ``resnetkit train``
flag (:mod:`resnetkit.cli.train`), so a new field is a new flag; :func:`check_choice` is the one
check of every field that has choices.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError


def flag(default: Any = None, *, group: str, help: str | None = None, metavar: str | None = None,
         choices: tuple[str, ...] | None = None, factory: Any = None,
         datasets: tuple[str, ...] | None = None, **argparse_kw: Any) -> Any:
    """A RunConfig field whose metadata makes its ``resnetkit train`` flag: ``--name-with-dashes``
    in argument ``group``, typed from the annotation (bool: ``--x/--no-x``); ``argparse_kw``
    (``flag``, ``action``, ``dest``) for the one flag that differs. ``datasets``: the only
    ``--dataset`` values that read it (a command fixed to another one leaves the flag out)."""
    meta = {"group": group, "help": help, "metavar": metavar, "choices": choices, "datasets": datasets,
            **argparse_kw}
    meta = {k: v for k, v in meta.items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    # -- model
    model: str | None = flag(group="model", metavar="NAME",
                             help="registry name (resnetkit models); default: the recipe's")
    model_args: dict[str, Any] = flag(
        group="model", factory=dict, flag="--model-arg", metavar="KEY=VALUE", action="append",
        dest="model_arg", help="builder argument, repeatable; VALUE is read as JSON when it parses "
                               "(true, 3, \"B\"), else as text. e.g. small_input=true")
    pretrained: str | None = flag(group="model", metavar="WEIGHTS",
                                  help="imagenet, a torchvision weights name or a file")
    freeze: str = flag("none", group="model", metavar="WHAT",
                       help="none | backbone | stages:N (with --pretrained)")
    freeze_epochs: int = flag(0, group="model", metavar="N", help="epochs before unfreezing the backbone")
    backbone_lr_mult: float = flag(0.1, group="model", metavar="X",
                                   help="backbone lr = lr * X after unfreezing")
    drop_rate: float | None = flag(group="model", metavar="P",
                                   help="dropout before the classifier, 0..1 (Keras' Dropout head; "
                                        "default: the model's, 0); recorded with the model's arguments")
    # -- data
    dataset: str = flag("digits", group="data", metavar="NAME",
                        help="digits (default, bundled), mnist, fashion-mnist, cifar10, cifar100, imagefolder, "
                              "arrays (a .npz, .npy or .h5 file), csv (a CSV of image paths and labels)")
    data_dir: str | None = flag(group="data", metavar="DIR",
                                help="where datasets live (default $RESNETKIT_DATA, else "
                                     "~/.cache/resnetkit/data); the folder for imagefolder")
    download: bool = flag(False, group="data", help="let torchvision download a missing MNIST, "
                                                    "Fashion-MNIST or CIFAR dataset")
    img_size: int | None = flag(group="data", metavar="PX", help="model input size (default: the dataset's)")
    # progressive resizing (in-memory path): the training input size rises linearly from
    # min_img_size at epoch 1 to img_size at epoch round(progressive_until * epochs), then stays
    min_img_size: int | None = flag(
        group="data", metavar="PX", help="progressive resizing (in-memory datasets): training batches "
                                         "are resized from PX at epoch 1 up to the input size, then kept there")
    progressive_until: float = flag(0.75, group="data", metavar="F",
                                    help="fraction of the epochs after which training runs at full size "
                                         "(default 0.75)")
    augment: str | None = flag(group="data", choices=("none", "basic", "strong", "randaugment", "trivialaugment"),
                               help="training augmentation: basic = crop and flip; strong = basic + cutout; "
                                    "randaugment, trivialaugment = basic + that policy, per image")
    mixup: float = flag(0.0, group="data", metavar="ALPHA",
                        help="mixup alpha (Beta(alpha, alpha) weights, Zhang et al. 2017); 0: off; "
                             "torchvision's references use 0.2")
    cutmix: float = flag(0.0, group="data", metavar="ALPHA",
                         help="cutmix alpha (Yun et al. 2019); 0: off; torchvision's references use 1.0")
    mix_prob: float = flag(1.0, group="data", metavar="P",
                           help="probability that a batch is mixed (with --mixup or --cutmix)")
    mix_switch_prob: float = flag(0.5, group="data", metavar="P",
                                  help="with both --mixup and --cutmix: probability of cutmix for a mixed batch")
    sampler: str = flag("shuffle", group="data", choices=("shuffle", "balanced"),
                        help="training order: shuffle (each sample once per epoch) | balanced (classes "
                             "drawn equally often, with replacement, seeded by --seed and the epoch)")
    val_size: int | None = flag(group="data", metavar="N",
                                help="images held out of the training split to choose the checkpoint "
                                     "(stratified, seeded by --seed); 0: train on all, keep the last "
                                     "epoch. Default: 5000 for MNIST, Fashion-MNIST and CIFAR, else a "
                                     "tenth of the training images")
    val_fraction: float | None = flag(group="data", metavar="F",
                                      help="the validation split as a share of the training images, "
                                           "instead of --val-size (image folders without val/: default 0.2)")
    subset: int | None = flag(group="data", metavar="N",
                              help="use N samples of the training split (stratified, the same for "
                                   "every seed); the val split is held out of them")
    test_subset: int | None = flag(group="data", metavar="N",
                                   help="evaluate the final report on N test samples (stratified, the same "
                                        "for every seed) instead of the whole test split: for quick tries")
    strict: bool = flag(False, group="data", help="unreadable image files (and bad, duplicate or "
                                                  "contradicting CSV rows) are an error, not a warning")
    allow_outside: bool = flag(False, group="data",
                               help="--dataset csv: follow rows whose path leads outside the CSV's folder "
                                    "(../, absolute paths); default: such rows are refused")
    workers: int | None = flag(group="data", metavar="N", help="loader processes for image folders")
    keys: str | None = flag(group="data", metavar="NAMES", datasets=("arrays",),
                            help="--dataset arrays: the array names when they follow no convention: X,Y "
                                 "or X,Y,XTEST,YTEST, or role=name pairs (x_train, y_train, x_val, y_val, "
                                 "x_test, y_test, classes)")
    classes: str | None = flag(group="data", metavar="A,B,...", datasets=("arrays", "csv"),
                               help="--dataset arrays or csv: class names, comma-separated, in label order "
                                    "(integer labels index them); default: list_classes, else the labels")
    columns: str | None = flag(group="data", metavar="PATH,LABEL[,SPLIT]", datasets=("csv",),
                               help="--dataset csv: the names of the path, label and (optional) split "
                                    "columns (default path,label,split)")
    # -- optimisation
    recipe: str | None = flag(group="optimisation", metavar="NAME",
                              help="preset of the values below: default, fast (MNIST, Fashion-MNIST; "
                                   "CIFAR-10 for a GPU), finetune (a pretrained ResNet-18)")
    epochs: int | None = flag(group="optimisation", metavar="N")
    max_steps: int | None = flag(group="optimisation", metavar="N",
                                 help="stop after N optimizer steps in all, inside an epoch if need be; the "
                                      "schedule ends there (--time-budget sets it)")
    # str first: the flag takes "90", "90s", "3m"; resolved to seconds (recipes.check_config)
    time_budget: str | float | None = flag(
        group="optimisation", metavar="DURATION",
        help="wall time for the whole process (90, 90s, 3m): the run times itself and fits --epochs, "
             "counting evaluation, TTA and the report; the schedule is stretched to those epochs")
    batch_size: int | None = flag(group="optimisation", metavar="N", help="global batch size")
    lr: float | None = flag(group="optimisation", metavar="LR", help="peak learning rate")
    optimizer: str | None = flag(group="optimisation", choices=("sgd", "adam", "adamw"),
                                 help="sgd: momentum 0.9, Nesterov")
    weight_decay: float | None = flag(group="optimisation", metavar="WD", help="on conv and linear weights only")
    schedule: str | None = flag(group="optimisation",
                                choices=("onecycle", "cosine", "linear", "step", "constant", "plateau"),
                                help="lr schedule, per batch; linear: warmup, then straight down to zero; "
                                     "plateau: x0.1 after 3 evaluations without a lower validation loss")
    warmup_epochs: float | None = flag(group="optimisation", metavar="E",
                                       help="linear warmup (one-cycle: the rise)")
    label_smoothing: float | None = flag(group="optimisation", metavar="EPS")
    class_weights: str = flag("none", group="optimisation", choices=("none", "balanced"),
                              help="loss weight per class: balanced = n / (classes * count), as scikit-learn")
    accum_steps: int = flag(1, group="optimisation", metavar="N",
                            help="gradient accumulation: one optimizer step per N batches (an effective "
                                 "batch of N x --batch-size)")
    clip_grad: float | None = flag(group="optimisation", metavar="NORM",
                                   help="clip the gradient's global L2 norm to NORM before each update")
    early_stop: int | None = flag(group="optimisation", metavar="PATIENCE",
                                  help="stop after PATIENCE evaluations without a better val accuracy")
    eval_every: int = flag(1, group="optimisation", metavar="N",
                           help="evaluate the val split every N epochs (and the last); the test split "
                                "is read once, at the end")
    tta: bool = flag(False, group="optimisation", help="evaluate each image as the mean logits of its views: it, its "
                                                              "horizontal flip (where the data trains with flips), each "
                                                              "also shifted 1 px up-left and down-right")
    ema: float | None = flag(group="optimisation", metavar="DECAY",
                             help="keep an exponential moving average of the weights (e.g. 0.99, warmed up "
                                  "as in timm); it is evaluated and saved, the raw weights go on training")
    # -- hardware and speed
    seed: int = flag(0, group="hardware", metavar="N")
    device: str = flag("auto", group="hardware", metavar="DEV", choices=("auto", "cpu", "cuda", "mps"),
                       help="auto (cuda, else mps, else cpu) | cpu | cuda[:N] | mps")
    precision: str = flag("auto", group="hardware", choices=("auto", "fp32", "bf16", "fp16"),
                          help="auto (default): on a CPU the faster of fp32 and bf16 autocast, timed on "
                               "this machine (bf16 only where the CPU has it natively) and cached; "
                               "bf16 (else fp16) on CUDA")
    # None: auto, timed on a CPU by the speed probe (resnetkit.probe), off on CUDA and MPS
    channels_last: bool | None = flag(None, group="hardware",
                                      help="force the NHWC memory format on (or off with --no-channels-last); "
                                           "default: timed on a CPU with --precision auto, off on a GPU")
    compile: bool = flag(False, group="hardware", help="torch.compile the model")
    sync_bn: bool = flag(False, group="hardware", help="synchronise BatchNorm across processes")
    nproc: int = flag(1, group="hardware", metavar="N",
                      help="data-parallel processes on this machine, started through torchrun; "
                           "--batch-size stays the global batch")
    threads: int | None = flag(group="hardware", metavar="N",
                               help="CPU threads for torch (default: the speed probe's choice)")
    reprobe: bool = flag(False, group="hardware",
                         help="measure the speed settings (and the OpenMP wait policy) again instead of "
                              "trusting the probe's cache; the new measurement replaces the cached one")
    # -- output
    out: str | None = flag(group="output", metavar="RUN_DIR",
                           help="run folder (default runs/<dataset>-<model>-<time>)")
    resume: str | None = flag(group="output", metavar="RUN_DIR",
                              help="continue an interrupted run with its saved config")
    log_grad_norms: bool = flag(False, group="output", help="record per-stage gradient norms in metrics.jsonl")
    tensorboard: bool = flag(False, group="output",
                             help="TensorBoard event files in RUN_DIR/tb/ (needs pip install "
                                  "'resnetkit[tensorboard]')")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(
                f"unknown config key(s): {', '.join(unknown)}; valid keys are the flag names of "
                f"'resnetkit train' with dashes as underscores (e.g. batch_size)"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# Defaults of ``resnetkit finetune`` and ``--recipe finetune``, for small photo datasets.
# AdamW at 1e-3 trains a new head fast without tuning; the backbone at 1e-4 (x0.1) keeps the
# ImageNet features while adapting them (the usual discriminative fine-tuning rates, Howard &
# Ruder 2018, arXiv:1801.06146). Two frozen epochs first let the random head settle so its large
# early gradients do not wreck the pretrained features (Kumar et al. 2022, arXiv:2202.10054).
FINETUNE_RECIPE: dict[str, Any] = {
    "model": "resnet18",
    "pretrained": "imagenet",
    "freeze_epochs": 2,
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "optimizer": "adamw",
    "weight_decay": 0.01,  # decoupled: shrinks weights by lr * 0.01 per step
    "schedule": "cosine",
    "warmup_epochs": None,
    "label_smoothing": 0.1,
    "augment": "basic",
}



def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def choices(name: str) -> tuple[str, ...]:
    """The values RunConfig field ``name`` takes (its metadata)."""
    return next(f.metadata["choices"] for f in dataclasses.fields(RunConfig) if f.name == name)


def check_choice(name: str, value: Any) -> Any:
    """``value`` when it is one of RunConfig field ``name``'s choices (``device`` also takes
    DEVICE:N), else a UserError naming them."""
    allowed = choices(name)
    base = value.split(":")[0] if name == "device" and re.fullmatch(r"[a-z]+:\d+", str(value)) else value
    if base not in allowed:
        hint = " (or cuda:N)" if name == "device" else ""
        raise UserError(f"unknown --{name.replace('_', '-')} {value!r}; choose one of {', '.join(allowed)}{hint}")
    return value


# None leaves these to the dataset (its size, no progressive resizing, the whole split); a 0
# given by the user is a mistake, not "unset": (smallest value, unit, what leaving it out gives).
DATA_SIZES = {"img_size": (4, "pixels", "the dataset's input size"),
              "min_img_size": (4, "pixels", "no progressive resizing"),
              "subset": (1, "training samples", "the whole training split"),
              "test_subset": (1, "test samples", "the whole test split")}


def check_data_sizes(cfg: RunConfig) -> None:
    """--img-size, --min-img-size and --subset: unset (None) or a whole number in range."""
    for key, (low, unit, unset) in DATA_SIZES.items():
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            flag = f"--{key.replace('_', '-')}"
            raise UserError(f"{flag} must be a whole number of {unit}, at least {low}, got {value!r}; "
                            f"leave {flag} out for {unset}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of RunConfig keys (dashes become underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}; pass a YAML or JSON file with --config")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # YAML is a superset of JSON, so this reads both

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        if mark is not None:  # YAML: name the line and what is wrong there
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            where = f"line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(e, json.JSONDecodeError):
            what, where = e.msg, f"line {e.lineno}, column {e.colno}"
        else:
            what, where = str(e).splitlines()[0], "?"
        raise UserError(f"cannot parse config file {p} at {where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values, not {type(data).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    RunConfig.from_dict(out)  # validates the keys
    return checked_types(out, f"config file {p}")


def json_fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a type of the RunConfig field annotation ``hint`` (an int is a
    float; a bool is neither); kinds JSON cannot tell apart (Any, Literal) are checked where used."""
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for kind in kinds:
        kind = typing.get_origin(kind) or kind  # dict[str, Any] -> dict
        if kind is type(None):
            ok = value is None
        elif kind in (int, float):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and (kind is float or isinstance(value, int)))
        elif kind in (str, bool, dict, list, tuple):
            ok = isinstance(value, list if kind is tuple else kind)
        else:
            ok = True
        if ok:
            return True
    return False


_KIND_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
               dict: "a mapping of KEY: VALUE", type(None): "empty (null)"}


def checked_types(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` (RunConfig keys) with each value checked against its field's type, so that a
    config file's ``model: 5`` is one line here, not a traceback deep in the run. A number YAML
    read as text (``lr: 1e-3``: YAML 1.1 wants a dot) is taken as the number it spells."""
    hints = typing.get_type_hints(RunConfig)
    out, wrong = dict(data), []
    for key, value in data.items():
        hint = hints[key]
        if json_fits(value, hint):
            continue
        number = _yaml_number(value, hint)
        if number is not None:
            out[key] = number
            continue
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        expected = " or ".join(_KIND_WORDS.get(typing.get_origin(k) or k, str(k)) for k in kinds)
        wrong.append(f"{key}={value!r:.40} (expected {expected})")
    if wrong:
        raise UserError(f"{where}: wrong type(s): {'; '.join(wrong)}; fix the value(s) or leave the key(s) out")
    return out


def _yaml_number(value: Any, hint: Any) -> int | float | None:
    if not isinstance(value, str):
        return None
    kinds = typing.get_args(hint) or (hint,)
    try:
        number = float(value)
    except ValueError:
        return None
    if int in kinds and number.is_integer() and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    return number if float in kinds else None


# Fields whose 0 older versions took for "unset" (the dataset's size, the whole split); now None.
UNSET_AS_ZERO = ("img_size", "min_img_size", "subset")

# --data-dir is the data itself (not where datasets live) for these: never dropped.
DATA_IS_PATH = ("imagefolder", "arrays", "csv")


def recorded_config(saved: Mapping[str, Any]) -> RunConfig:
    """The config a run folder or checkpoint recorded, as this version reads it: keys it does not
    know are dropped, and a recorded data folder that is not on this machine (the run was moved
    or copied) is dropped too, so that $RESNETKIT_DATA and then the cache apply. An image
    folder's, array file's or CSV's path is kept: it is the data itself, and its absence is
    the error to report."""
    known = set(field_names())
    values = {k: v for k, v in saved.items() if k in known}
    for key in UNSET_AS_ZERO:  # earlier versions read a 0 here as unset, and recorded it
        if values.get(key) == 0 and not isinstance(values[key], bool):
            values[key] = None
    folder = values.get("data_dir")
    if folder and values.get("dataset") not in DATA_IS_PATH and not Path(folder).expanduser().exists():
        values["data_dir"] = None
    return RunConfig.from_dict(values)
