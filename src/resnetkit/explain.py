"""Where the model looks: Grad-CAM and Grad-CAM++ heat maps, and pictures of them.

Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391) weights each channel of a convolutional
stage's output by the mean gradient of the class score over it; Grad-CAM++ (Chattopadhay et al.
2018, arXiv:1710.11063, eq. 19) weights the positive gradients per position instead, which
separates several instances of a class better.

Written here with hooks rather than taken from the ``grad-cam`` package: both methods are a few
lines of tensor algebra, while the package pulls in OpenCV, SciPy and ttach, works on NumPy copies
(one batch at a time on the CPU) and needs the target layer named by hand per architecture. The
test suite checks these maps against the package's where it is installed.

The target is the last residual stage (``model.stages``, else the last child holding a
convolution) whose output is at least 7x7 (ResNet's own layer4 map at 224 px): a 2x2 map
upsampled is the same smooth blob on every image, so a small input is explained on an earlier,
finer stage. Where no stage reaches 7x7 (8x8 digits), the largest map is used. ``layer=NAME``
picks any module instead; its map is upsampled to the input as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import UserError

METHODS = ("gradcam", "gradcam++")
EPS = 1e-7  # min-max scaling guard, as pytorch-grad-cam
PP_EPS = 1e-6  # Grad-CAM++ denominator guard, as pytorch-grad-cam (gradients are often ~1e-4)
MIN_MAP = 7  # pixels on the shorter side of the default target's map: layer4 of a ResNet at 224 px
DISPLAY_MIN = 160  # pixels: small inputs (8x8 digits, 28x28 MNIST) are enlarged to this for viewing


@dataclass
class CamResult:
    heatmaps: torch.Tensor  # (N, H, W) in [0, 1] at the model's input size
    logits: torch.Tensor  # (N, classes)
    targets: torch.Tensor  # (N,) the class each map explains
    layer: str  # the module whose output was weighted


def candidate_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual stages in order, or, for a net without ``stages``, its children that hold a
    convolution (any torchvision-style CNN)."""
    stages = getattr(model, "stages", None)
    if stages:
        names = {id(m): n for n, m in model.named_modules()}
        return [(names.get(id(m), n), m) for n, m in stages]
    found = [(n, m) for n, m in model.named_children()
             if any(isinstance(s, nn.Conv2d) for s in m.modules())]
    if not found:
        raise UserError(f"{type(model).__name__} has no convolutional stage to explain")
    return found


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
             *, method: str = "gradcam", layer: str | None = None) -> CamResult:
    """Heat maps of ``x`` (N, C, H, W, normalized) for ``target`` (one class for all, one per
    image, or None: each image's predicted class). ``layer``: the name of the module whose
    output is weighted (``model.named_modules()``); default: the last stage at least 7x7."""
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; choose {' or '.join(METHODS)}")
    layers = [named_layer(model, layer)] if layer else candidate_layers(model)
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(_keep(outputs, name)) for name, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            name = _widest_last(layers, outputs)
            classes = _targets(target, logits)
            score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode
            acts = outputs[name]
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    cam = _combine(acts.detach().float(), grads.float(), method)
    return CamResult(_scale(cam, x.shape[-2:]), logits.detach().float(), classes.detach(), name)


def named_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """(name, module) of ``--layer NAME``; an unknown name lists the stages to choose from."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        stages = ", ".join(n for n, _ in candidate_layers(model))
        raise UserError(f"--layer {name!r}: no such module in {type(model).__name__}; its stages are {stages} "
                        f"(any name of model.named_modules() works, e.g. layer3.1)")
    return name, modules[name]


def _keep(store: dict[str, torch.Tensor], name: str) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            store[name] = output
    return hook


def _widest_last(layers: list[tuple[str, nn.Module]], outputs: dict[str, torch.Tensor]) -> str:
    seen = [n for n, _ in layers if n in outputs]
    if not seen:
        raise UserError("no stage produced a feature map (N, C, H, W) to explain")
    side = {n: min(outputs[n].shape[-2:]) for n in seen}
    fine = [n for n in seen if side[n] >= MIN_MAP]
    if fine:
        return fine[-1]
    largest = max(side.values())  # no stage reaches 7x7: the finest map there is, the last of those
    return [n for n in seen if side[n] == largest][-1]


def _targets(target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    n, k = logits.shape
    if target is None:
        out = logits.detach().argmax(1)
    else:
        out = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1).expand(n)
    if ((out < 0) | (out >= k)).any():
        raise UserError(f"class index out of range: the model has {k} classes")
    return out.contiguous()


def _combine(acts: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """(N, K, h, w) activations and gradients -> (N, h, w) ReLU of the weighted channel sum."""
    if method == "gradcam":
        weights = grads.mean(dim=(2, 3))
    else:  # Grad-CAM++ with the exponential score's closed form, as in the paper and the package
        g2 = grads.pow(2)
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads + PP_EPS
        alpha = torch.where(grads != 0, g2 / denom, torch.zeros_like(g2))
        weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3))
    return torch.relu((weights[:, :, None, None] * acts).sum(1))


def _scale(cam: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear up to the input size, then each map to [0, 1] by min-max (pytorch-grad-cam scales
    before and after resizing; bilinear interpolation is linear, so once after is the same)."""
    up = nn.functional.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.flatten(1).min(1).values[:, None, None]
    up = up / (EPS + up.flatten(1).max(1).values[:, None, None])
    return up.clamp(0, 1).cpu()


# ------------------------------------------------------------------ pictures
def to_rgb(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalized (C, H, W) input back to (H, W, 3) uint8 pixels (grayscale repeated)."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    img = (x.detach().float().cpu() * s + m).clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img[:3].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def overlay(rgb: np.ndarray, heatmap: np.ndarray | torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """The image with the heat map on top in matplotlib's ``jet`` colours (red: most weight)."""
    from matplotlib import colormaps

    heat = np.asarray(heatmap, dtype=np.float32)
    colours = colormaps["jet"](heat)[..., :3] * 255
    return (rgb.astype(np.float32) * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def display_size(h: int, w: int, minimum: int = DISPLAY_MIN) -> tuple[int, int]:
    """(width, height) enlarged by a whole factor until the shorter side reaches ``minimum``."""
    factor = max(1, -(-minimum // max(1, min(h, w))))
    return w * factor, h * factor


def side_by_side(rgb: np.ndarray, heatmap: np.ndarray | torch.Tensor, caption: str | None = None) -> Any:
    """A PIL image: the input (enlarged with nearest-neighbour pixels) and its overlay, with an
    optional caption strip underneath."""
    from PIL import Image, ImageDraw

    size = display_size(*rgb.shape[:2])
    left = Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST)
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    big = np.asarray(left)
    right = Image.fromarray(overlay(big, np.asarray(heat).clip(0, 1)))
    strip = 22 if caption else 0
    out = Image.new("RGB", (2 * size[0] + 4, size[1] + strip), "white")
    out.paste(left, (0, 0))
    out.paste(right, (size[0] + 4, 0))
    if caption:
        ImageDraw.Draw(out).text((4, size[1] + 3), caption, fill="black", font=_font(14))
    return out


def _font(px: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: its one small bitmap font
        return ImageFont.load_default()


def label_image(image: Any, text: str, minimum: int = DISPLAY_MIN) -> Any:
    """A copy of a PIL image (enlarged to ``minimum`` px when smaller, nearest-neighbour) with
    ``text`` in white on a dark band across its top."""
    from PIL import Image, ImageDraw

    image = image.convert("RGB")
    size = display_size(image.height, image.width, minimum)
    if size != image.size:
        image = image.resize(size, Image.Resampling.NEAREST)
    font_px = max(14, image.width // 10)
    font = _font(font_px)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), text, font=font)
    band = box[3] + font_px // 3
    draw.rectangle((0, 0, min(image.width, box[2] + font_px // 2), band), fill=(0, 0, 0))
    draw.text((font_px // 4, font_px // 6), text, fill=(255, 255, 255), font=font)
    return image
