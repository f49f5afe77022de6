"""AutoAugment's CIFAR-10 policy (SPEC 4.6) on uint8 batches that live on any device, exact to the PIL port.

The 14 ops reproduce the PIL port used by the reference pixel for pixel: the arithmetic below mirrors
Pillow's own (float32 blends truncated to uint8, the fixed-point 16.16 affine used by nearest-neighbour
rotation, the a = -1 cubic of ``Image.transform``).  Two places compute in float64 because Pillow does and
float32 would flip a truncation now and then: the autocontrast ramp and the bicubic shear.  Both are plain
IEEE elementwise ops (no fused kernels), so CPU and CUDA agree: every op was checked bit-identical between
the two on an H100. Each image draws its own sub-policy; images are grouped per op (or every op runs on
every image, for a sync-free call), never looped over.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

FILL = 128  # grey that the reference's geometric ops leave outside the source image

# ----------------------------------------------------------------------------------------------------
# Magnitude tables (SPEC 4.6): index m in 0..9 -> op parameter, built with NumPy exactly as the reference

_SHEAR = np.linspace(0, 0.3, 10)
_TRANSLATE_PX = np.linspace(0, 150 / 331, 10) * 32
_ROTATE_DEG = np.linspace(0, 30, 10)
_ENHANCE = np.linspace(0.0, 0.9, 10)
_POSTERIZE_BITS = np.round(np.linspace(8, 4, 10), 0).astype(int)
_SOLARIZE_THRESHOLD = np.linspace(256, 0, 10)


def _fixed_point_rotation(angle_deg: float, size: int = 32) -> tuple[int, ...]:
    """Return Pillow's 16.16 fixed-point inverse affine (a0..a5) for ``Image.rotate(angle_deg)``."""
    # Same float64 operations, in the same order, as Image.rotate then ImagingTransformAffine, so the
    # rounded integers (and thus every sampled pixel) are identical.
    angle = -math.radians(angle_deg)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    centre = size / 2
    c = a * -centre + b * -centre + 0.0 + centre
    f = d * -centre + e * -centre + 0.0 + centre

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    return fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)


@functools.lru_cache(maxsize=None)
def _table(name: str, device: torch.device) -> Tensor:
    """Return the lookup table ``name`` on ``device`` (built once per device)."""
    # signed tables: row 0 for sign -1, row 1 for sign +1
    tables = {
        "shear": ([[s * v for v in _SHEAR] for s in (-1, 1)], torch.float64),
        # Pillow samples source column floor(x + t + 0.5): the pixel-centre convention of its affine.
        "translate": ([[math.floor(s * t + 0.5) for t in _TRANSLATE_PX] for s in (-1, 1)], torch.int64),
        "rotate": ([_fixed_point_rotation(float(a)) for a in _ROTATE_DEG], torch.int64),
        "enhance": ([[1 + v * s for v in _ENHANCE] for s in (-1, 1)], torch.float64),
        "posterize": ([(~(2 ** (8 - int(b)) - 1)) & 0xFF for b in _POSTERIZE_BITS], torch.uint8),
        # x < threshold keeps x; for integer x that is x < ceil(threshold)
        "solarize": ([math.ceil(t) for t in _SOLARIZE_THRESHOLD], torch.int16),
        "autocontrast_scale": ([0.0] + [255.0 / d for d in range(1, 256)], torch.float64),
    }
    values, dtype = tables[name]
    return torch.tensor(values, dtype=dtype, device=device)


def _signed_lookup(name: str, m: Tensor, sign: Tensor) -> Tensor:
    """Return table ``name`` at magnitude ``m`` [N] and sign ``sign`` [N] (+1/-1)."""
    return _table(name, m.device)[(sign > 0).long(), m]


def check_uint8_batch(x: Tensor, where: str, cifar_size: bool = False) -> None:
    """Raise if ``x`` is not a uint8 [B, 3, H, W] batch (with H = W = 32 when ``cifar_size``)."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{where} expects a uint8 batch [B, 3, H, W] with values 0..255, got {x.dtype} "
            f"{tuple(x.shape)}; keep images as uint8 NCHW until to_unit_float"
        )
    if cifar_size and tuple(x.shape[2:]) != (32, 32):
        # the translate and rotate tables hold Pillow's integer offsets for 32-pixel images
        raise ValueError(f"{where} supports 32x32 CIFAR images only, got {tuple(x.shape[2:])}; crop first")


# ----------------------------------------------------------------------------------------------------
# Pixel-level ops: uint8 [N, 3, H, W] in, uint8 out; m and sign are [N] tensors


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """Return Pillow's ``Image.blend(degenerate, x, factor)``: float32 lerp, truncated and clipped."""
    factor = factor.to(torch.float32).view(-1, 1, 1, 1)
    lo = degenerate.to(torch.float32)
    # Two separate ops (no lerp/FMA) so each product and sum rounds to float32 as Pillow's C does.
    out = lo + factor * (x.to(torch.float32) - lo)
    return out.clamp(0, 255).to(torch.uint8)


def _grey(x: Tensor) -> Tensor:
    """Return Pillow's RGB -> L conversion as int32 [N, 1, H, W]."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).unsqueeze(1)


def _per_channel_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Return ``x`` [N, C, H, W] mapped through ``lut`` [N, C, 256]."""
    n, c, h, w = x.shape
    return torch.gather(lut, 2, x.reshape(n, c, h * w).long()).reshape(n, c, h, w).to(torch.uint8)


def invert(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageOps.invert``: 255 - x."""
    return 255 - x


def posterize(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageOps.posterize`` keeping round(linspace(8, 4))[m] high bits."""
    return x & _table("posterize", x.device)[m].view(-1, 1, 1, 1)


def solarize(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageOps.solarize`` with threshold linspace(256, 0)[m]: values >= it are inverted."""
    threshold = _table("solarize", x.device)[m].view(-1, 1, 1, 1)
    return torch.where(x.to(torch.int16) < threshold, x, 255 - x)


def autocontrast(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageOps.autocontrast``: each channel stretched so its min -> 0 and max -> 255."""
    lo = x.amin(dim=(2, 3), keepdim=True).long()
    hi = x.amax(dim=(2, 3), keepdim=True).long()
    scale = _table("autocontrast_scale", x.device)[hi - lo]
    # Pillow's LUT is int(ix * scale - lo * scale) in float64; an exact integer ramp differs from it on
    # about 0.4% of (lo, hi, ix) triples, so the float64 steps are kept.
    stretched = (x.to(torch.float64) * scale + (-lo).to(torch.float64) * scale).clamp(0, 255)
    return torch.where(hi > lo, stretched.to(torch.uint8), x)


def equalize(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageOps.equalize``: each channel mapped through its cumulative histogram."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))  # integer atomics: deterministic on CUDA
    top = flat.amax(dim=1, keepdim=True)  # brightest occupied bin
    step = (h * w - hist.gather(1, top)) // 255  # [n*c, 1]
    before = hist.cumsum(1) - hist  # pixels strictly darker than each bin
    safe_step = step.clamp(min=1)
    lut = ((safe_step // 2 + before) // safe_step).clamp(max=255)
    # Pillow leaves a channel untouched when step is 0 (one grey level, or almost all pixels in the top bin)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return _per_channel_lut(x, lut.reshape(n, c, 256))


def color(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageEnhance.Color(img).enhance(1 +/- linspace(0, 0.9)[m])``."""
    return _blend(_grey(x).expand_as(x), x, _signed_lookup("enhance", m, sign))


def contrast(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageEnhance.Contrast(img).enhance(1 +/- linspace(0, 0.9)[m])``."""
    pixels = x.shape[2] * x.shape[3]
    total = _grey(x).sum(dim=(1, 2, 3), dtype=torch.int64)
    mean = (2 * total + pixels) // (2 * pixels)  # int(mean + 0.5), as Pillow rounds the L-image mean
    return _blend(mean.view(-1, 1, 1, 1).expand_as(x), x, _signed_lookup("enhance", m, sign))


def brightness(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageEnhance.Brightness(img).enhance(1 +/- linspace(0, 0.9)[m])``."""
    return _blend(torch.zeros_like(x), x, _signed_lookup("enhance", m, sign))


def _smooth(x: Tensor) -> Tensor:
    """Return Pillow's ``ImageFilter.SMOOTH`` (3x3 ones, centre 5, /13, rounded; border kept)."""
    xi = x.to(torch.int32)
    h, w = x.shape[2], x.shape[3]
    total = 4 * xi[:, :, 1:-1, 1:-1]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total = total + xi[:, :, dy : h - 2 + dy, dx : w - 2 + dx]
    out = x.clone()
    # round(total / 13) exactly: total / 13 is never a half, so Pillow's float32 sum rounds the same way
    out[:, :, 1:-1, 1:-1] = ((2 * total + 13) // 26).to(torch.uint8)
    return out


def sharpness(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``ImageEnhance.Sharpness(img).enhance(1 +/- linspace(0, 0.9)[m])``."""
    return _blend(_smooth(x), x, _signed_lookup("enhance", m, sign))


# ----------------------------------------------------------------------------------------------------
# Geometric ops; pixels whose source falls outside the image get FILL


def _shift(x: Tensor, shift: Tensor, dim: int) -> Tensor:
    """Return ``x`` with out[..., i, ...] = x[..., i + shift, ...] along ``dim`` (2 or 3), FILL outside."""
    n, c, h, w = x.shape
    length = x.shape[dim]
    src = torch.arange(length, device=x.device) + shift.view(-1, 1)  # [N, length]
    valid = (src >= 0) & (src < length)
    view = (n, 1, length, 1) if dim == 2 else (n, 1, 1, length)
    index = src.clamp(0, length - 1).view(view).expand(n, c, h, w)
    return torch.where(valid.view(view), torch.gather(x, dim, index), FILL)


def translate_x(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return the AFFINE (1, 0, t*sign, 0, 1, 0) nearest transform, t = linspace(0, 150/331)[m] * 32."""
    return _shift(x, _signed_lookup("translate", m, sign), dim=3)


def translate_y(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return the AFFINE (1, 0, 0, 0, 1, t*sign) nearest transform, t = linspace(0, 150/331)[m] * 32."""
    return _shift(x, _signed_lookup("translate", m, sign), dim=2)


def rotate(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return ``img.rotate(linspace(0, 30)[m])`` (counter-clockwise, nearest) over a FILL background."""
    n, c, h, w = x.shape
    a0, a1, a2, a3, a4, a5 = _table("rotate", x.device)[m].view(n, 6, 1, 1).unbind(1)  # each [N, 1, 1]
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    # Pillow steps through the output in 16.16 fixed point; >> 16 floors, negatives included.
    src_x = (a2 + ys * a1 + xs * a0) >> 16  # [N, H, W]
    src_y = (a5 + ys * a4 + xs * a3) >> 16
    valid = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    index = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w)
    return torch.where(valid.unsqueeze(1), out, FILL)


def _shear_rows(x: Tensor, shear: Tensor) -> Tensor:
    """Return the bicubic AFFINE (1, shear, 0, 0, 1, 0) of ``x`` [N, C, H, W] with FILL outside."""
    n, c, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w) + 0.5
    src = xs + shear.view(n, 1, 1) * ys  # [N, H, W] source column, pixel-centre coordinates
    valid = (src >= 0) & (src < w)
    left = torch.floor(src - 0.5)
    frac = ((src - 0.5) - left).unsqueeze(1)  # [N, 1, H, W]
    left = left.long()
    # The row coordinate is an exact pixel centre, so Pillow's vertical cubic weight is 1 on this row:
    # the shear is a horizontal cubic with taps at left-1 .. left+2, clamped to the border.
    taps = [
        torch.gather(x, 3, (left + k).clamp(0, w - 1).unsqueeze(1).expand(n, c, h, w)).to(torch.float64)
        for k in (-1, 0, 1, 2)
    ]
    v1, v2, v3, v4 = taps
    # Pillow's transform cubic (a = -1), evaluated in its Horner order
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 - v3 + v4
    value = v2 + frac * (p2 + frac * (p3 + frac * p4))
    return torch.where(valid.unsqueeze(1), value.clamp(0, 255).to(torch.uint8), FILL)


def shear_x(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return the bicubic AFFINE (1, s, 0, 0, 1, 0) transform, s = +/- linspace(0, 0.3)[m]."""
    return _shear_rows(x, _signed_lookup("shear", m, sign))


def shear_y(x: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """Return the bicubic AFFINE (1, 0, 0, s, 1, 0) transform, s = +/- linspace(0, 0.3)[m]."""
    # shearY is shearX with the axes swapped (Pillow's x/y formulas are symmetric)
    return _shear_rows(x.transpose(2, 3), _signed_lookup("shear", m, sign)).transpose(2, 3).contiguous()


OPS = {
    "shearX": shear_x,
    "shearY": shear_y,
    "translateX": translate_x,
    "translateY": translate_y,
    "rotate": rotate,
    "color": color,
    "posterize": posterize,
    "solarize": solarize,
    "contrast": contrast,
    "sharpness": sharpness,
    "brightness": brightness,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "invert": invert,
}
OP_NAMES = tuple(OPS)


def apply_op(name: str, x: Tensor, magnitude_index: Tensor | int, sign: Tensor | int = 1) -> Tensor:
    """Return AutoAugment op ``name`` applied to uint8 ``x`` [N, 3, H, W] with per-image magnitude/sign."""
    if name not in OPS:
        raise ValueError(f"unknown AutoAugment op {name!r}; use one of {', '.join(OP_NAMES)}")
    check_uint8_batch(x, "apply_op", cifar_size=True)
    n = x.shape[0]
    m = torch.as_tensor(magnitude_index, device=x.device).long().expand(n)
    if int(m.min()) < 0 or int(m.max()) > 9:
        raise ValueError(f"magnitude_index must lie in 0..9, got {m.tolist()}; use the SPEC 4.6 bins")
    s = torch.as_tensor(sign, device=x.device).expand(n)
    return OPS[name](x, m, s)


# ----------------------------------------------------------------------------------------------------
# The CIFAR-10 policy (SPEC 4.6): (p1, op1, m1, p2, op2, m2)

CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)


class AutoAugmentPlan(NamedTuple):
    """Per-image random choices of one AutoAugment pass."""

    policy: Tensor  # [B] int64, sub-policy index 0..24
    applied: Tensor  # [B, 2] bool, whether slot 1 / slot 2 fires
    sign: Tensor  # [B, 2] int64, +1 or -1 for the signed ops of each slot


@functools.lru_cache(maxsize=None)
def _policy_tensors(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Return CIFAR10_POLICY as (prob [25, 2] float32, op id [25, 2], magnitude [25, 2]) on ``device``."""
    probs = [[p1, p2] for p1, _, _, p2, _, _ in CIFAR10_POLICY]
    ops = [[OP_NAMES.index(o1), OP_NAMES.index(o2)] for _, o1, _, _, o2, _ in CIFAR10_POLICY]
    mags = [[m1, m2] for _, _, m1, _, _, m2 in CIFAR10_POLICY]
    as_tensor = functools.partial(torch.tensor, device=device)
    return as_tensor(probs, dtype=torch.float32), as_tensor(ops), as_tensor(mags)


def sample_autoaugment_plan(batch_size: int, gen: torch.Generator, device: torch.device) -> AutoAugmentPlan:
    """Return the random choices of one AutoAugment pass over ``batch_size`` images."""
    probs, _, _ = _policy_tensors(device)
    policy = torch.randint(0, len(CIFAR10_POLICY), (batch_size,), generator=gen, device=device)
    applied = torch.rand(batch_size, 2, generator=gen, device=device) < probs[policy]
    sign = torch.randint(0, 2, (batch_size, 2), generator=gen, device=device) * 2 - 1
    return AutoAugmentPlan(policy, applied, sign)


def apply_autoaugment_plan(x: Tensor, plan: AutoAugmentPlan, sync_free: bool = False) -> Tensor:
    """Return uint8 ``x`` [B, 3, H, W] after the sub-policies chosen in ``plan``.

    By default each op runs on the rows that drew it, which needs the group sizes on the host: one sync per
    slot. With ``sync_free`` all 14 ops run on every image (instead of one op on the about half of the
    images whose slot fires) and each image keeps its own op's result: the same images, since each op is
    per image, with no sync and fixed shapes, so the call can be recorded as a CUDA graph (``speed.graphed``).
    """
    _, op_ids, mags = _policy_tensors(x.device)
    out = x if sync_free else x.clone()  # the grouped path writes rows in place
    for slot in (0, 1):  # slot 2 acts on the output of slot 1
        # -1 marks images whose slot does not fire
        key = torch.where(plan.applied[:, slot], op_ids[plan.policy, slot], -1)
        mag, sign = mags[plan.policy, slot], plan.sign[:, slot]
        if sync_free:
            out = _every_op(out, key, mag, sign)
            continue
        order = torch.argsort(key, stable=True)  # groups the rows of each op together
        labels = torch.arange(-1, len(OP_NAMES), device=x.device)
        counts = (key.unsqueeze(1) == labels).sum(0).tolist()  # the one host sync per slot
        for name, rows in zip(OP_NAMES, torch.split(order, counts)[1:]):
            if rows.numel():
                out[rows] = OPS[name](out[rows], mag[rows], sign[rows])
    return out


def _every_op(x: Tensor, key: Tensor, mag: Tensor, sign: Tensor) -> Tensor:
    """Return ``x`` with op ``key[i]`` applied to image i (none where -1), computing every op on every image."""
    out = x
    for op_id, op in enumerate(OPS.values()):
        out = torch.where((key == op_id).view(-1, 1, 1, 1), op(x, mag, sign), out)
    return out


def autoaugment_cifar10(x: Tensor, gen: torch.Generator) -> Tensor:
    """Return uint8 ``x`` [B, 3, H, W] after one uniformly drawn CIFAR-10 sub-policy per image."""
    check_uint8_batch(x, "autoaugment_cifar10", cifar_size=True)
    return apply_autoaugment_plan(x, sample_autoaugment_plan(x.shape[0], gen, x.device))
