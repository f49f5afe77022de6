"""Batched CIFAR augmentation: each AutoAugment op against PIL, the policy's statistics, the pipelines."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from drolt import augment, autoaugment

GREY = (128, 128, 128)
# Agreement bound with PIL, per op family. Observed: no differing value at all (x86-64, Pillow 13.0 and 12.3).
PIXEL_BOUND = {"max_abs": 1, "max_frac": 1e-3, "max_mean": 1e-3}  # +/-1 grey level on <= 0.1% of values
GEOMETRIC_BOUND = {"max_abs": 255, "max_frac": 1e-3, "max_mean": 0.05}  # interpolation / fill edges
GEOMETRIC = {"shearX", "shearY", "rotate"}


# ----------------------------------------------------------------------------------------------------
# The PIL reference: SPEC 4.6's port, one image at a time


def pil_op(name: str, img: Image.Image, m: int, sign: int) -> Image.Image:
    """Return the reference PIL op ``name`` at magnitude index ``m`` with random sign ``sign``."""
    if name == "shearX":
        shear = np.linspace(0, 0.3, 10)[m] * sign
        return img.transform(img.size, Image.AFFINE, (1, shear, 0, 0, 1, 0), Image.BICUBIC, fillcolor=GREY)
    if name == "shearY":
        shear = np.linspace(0, 0.3, 10)[m] * sign
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, shear, 1, 0), Image.BICUBIC, fillcolor=GREY)
    if name in ("translateX", "translateY"):
        along_x = name == "translateX"
        shift = np.linspace(0, 150 / 331, 10)[m] * img.size[0 if along_x else 1] * sign
        coeffs = (1, 0, shift, 0, 1, 0) if along_x else (1, 0, 0, 0, 1, shift)
        return img.transform(img.size, Image.AFFINE, coeffs, fillcolor=GREY)
    if name == "rotate":
        rotated = img.convert("RGBA").rotate(np.linspace(0, 30, 10)[m])
        background = Image.new("RGBA", rotated.size, (128,) * 4)
        return Image.composite(rotated, background, rotated).convert(img.mode)
    enhancers = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "brightness": ImageEnhance.Brightness,
        "sharpness": ImageEnhance.Sharpness,
    }
    if name in enhancers:
        return enhancers[name](img).enhance(1 + np.linspace(0, 0.9, 10)[m] * sign)
    if name == "posterize":
        return ImageOps.posterize(img, int(np.round(np.linspace(8, 4, 10), 0).astype(int)[m]))
    if name == "solarize":
        return ImageOps.solarize(img, np.linspace(256, 0, 10)[m])
    parameterless = {
        "autocontrast": ImageOps.autocontrast,
        "equalize": ImageOps.equalize,
        "invert": ImageOps.invert,
    }
    return parameterless[name](img)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def assert_within_bound(ours: torch.Tensor, ref: torch.Tensor, bound: dict, what: str) -> None:
    diff = (ours.int() - ref.int()).abs().float()
    frac = (diff > 0).float().mean().item()
    assert diff.max().item() <= bound["max_abs"], f"{what}: max |diff| {diff.max().item()}"
    assert frac <= bound["max_frac"], f"{what}: {frac:.2%} of values differ"
    assert diff.mean().item() <= bound["max_mean"], f"{what}: mean |diff| {diff.mean().item():.4f}"


def sample_images() -> torch.Tensor:
    """Return 26 uint8 images: noise, smooth noise, and structured cases that hit the ops' edge paths."""
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8))
    coarse = torch.from_numpy(rng.integers(0, 256, (8, 3, 8, 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    narrow = torch.from_numpy(rng.integers(100, 141, (2, 3, 32, 32), dtype=np.uint8))
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    gradient = torch.stack([8 * j, 255 - 8 * i, 4 * (i + j)])
    constant = torch.full((3, 32, 32), 77)
    checker = torch.where((i + j) % 2 == 0, 30, 200).expand(3, 32, 32)
    mostly_one_level = torch.full((3, 32, 32), 200)  # equalize: < 255 pixels below the top bin -> unchanged
    mostly_one_level[:, :10, :10] = 10
    # channels in different regimes: constant, two levels, noise
    noise_channel = torch.from_numpy(rng.integers(0, 256, (32, 32)))
    mixed = torch.stack([torch.full((32, 32), 250), torch.where(i < 5, 0, 255), noise_channel])
    structured = torch.stack([gradient, gradient.flip(2), constant, checker, mostly_one_level, mixed])
    return torch.cat([noise, smooth.round().to(torch.uint8), narrow, structured.to(torch.uint8)])


IMAGES = sample_images()


# ----------------------------------------------------------------------------------------------------
# Each op against PIL


@pytest.mark.parametrize("name", autoaugment.OP_NAMES)
def test_batched_op_matches_pil_at_every_magnitude_and_sign(name):
    # one batch holds every (image, magnitude, sign) combination, so per-image parameters are exercised too
    grid = [(k, m, s) for m in range(10) for s in (1, -1) for k in range(len(IMAGES))]
    index, mags, signs = (torch.tensor(column) for column in zip(*grid))
    ours = autoaugment.apply_op(name, IMAGES[index], mags, signs)
    ref = torch.stack([from_pil(pil_op(name, to_pil(IMAGES[k]), m, s)) for k, m, s in grid])
    assert ours.dtype == torch.uint8 and ours.shape == ref.shape
    assert_within_bound(ours, ref, GEOMETRIC_BOUND if name in GEOMETRIC else PIXEL_BOUND, name)


def test_apply_op_accepts_scalar_magnitude_and_default_sign():
    expected = autoaugment.apply_op("brightness", IMAGES, torch.full((len(IMAGES),), 4), torch.ones(len(IMAGES)))
    assert torch.equal(autoaugment.apply_op("brightness", IMAGES, 4), expected)


def test_geometric_ops_fill_uncovered_pixels_with_grey_128():
    black = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    for name in ("shearX", "shearY", "translateX", "translateY", "rotate"):
        out = autoaugment.apply_op(name, black, 9, 1)
        assert set(out.unique().tolist()) == {0, 128}, name


def test_apply_op_rejects_unknown_names_bad_magnitudes_float_input_and_other_sizes():
    with pytest.raises(ValueError, match="unknown AutoAugment op 'cutout'"):
        autoaugment.apply_op("cutout", IMAGES, 0)
    with pytest.raises(ValueError, match="magnitude_index must lie in 0..9"):
        autoaugment.apply_op("rotate", IMAGES, 10)
    with pytest.raises(ValueError, match="expects a uint8 batch"):
        autoaugment.apply_op("invert", IMAGES.float(), 0)
    with pytest.raises(ValueError, match="32x32 CIFAR images only"):
        autoaugment.apply_op("rotate", IMAGES[:, :, :16, :16], 0)


# ----------------------------------------------------------------------------------------------------
# The CIFAR-10 policy


def test_policy_table_is_spec_4_6():
    assert len(autoaugment.CIFAR10_POLICY) == 25
    assert autoaugment.CIFAR10_POLICY[0] == (0.1, "invert", 7, 0.2, "contrast", 6)
    assert autoaugment.CIFAR10_POLICY[14] == (0.5, "solarize", 2, 0.0, "invert", 3)
    assert autoaugment.CIFAR10_POLICY[24] == (0.7, "translateY", 9, 0.9, "autocontrast", 1)
    used = {op for row in autoaugment.CIFAR10_POLICY for op in (row[1], row[4])}
    assert used == set(autoaugment.OP_NAMES) - {"shearX"}  # the CIFAR-10 policy never shears along x


def test_subpolicies_are_uniform_and_slots_fire_with_their_probabilities():
    n = 20_000
    plan = autoaugment.sample_autoaugment_plan(n, torch.Generator().manual_seed(1), torch.device("cpu"))
    counts = torch.bincount(plan.policy, minlength=25).double()
    chi2 = ((counts - n / 25) ** 2 / (n / 25)).sum().item()
    assert chi2 < 60, f"sub-policy counts not uniform (chi2 {chi2:.1f}, df 24, p < 1e-4 above 52)"
    for k, (p1, _, _, p2, _, _) in enumerate(autoaugment.CIFAR10_POLICY):
        chosen = plan.policy == k
        for slot, p in ((0, p1), (1, p2)):
            rate = plan.applied[chosen, slot].double().mean().item()
            tolerance = 4.5 * (p * (1 - p) / chosen.sum().item()) ** 0.5
            assert abs(rate - p) <= tolerance, f"sub-policy {k} slot {slot + 1}: rate {rate:.3f}, p {p}"
    assert set(plan.sign.unique().tolist()) == {-1, 1}
    assert abs((plan.sign == 1).double().mean().item() - 0.5) < 0.02


def test_autoaugment_batch_matches_pil_subpolicy_per_image():
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([IMAGES, IMAGES.flip(3)] * 3)
    plan = autoaugment.sample_autoaugment_plan(len(x), gen, x.device)
    ours = autoaugment.apply_autoaugment_plan(x, plan)
    ref = []
    for k in range(len(x)):
        p1, op1, m1, p2, op2, m2 = autoaugment.CIFAR10_POLICY[plan.policy[k]]
        img = to_pil(x[k])
        for slot, (op, m) in enumerate(((op1, m1), (op2, m2))):
            if plan.applied[k, slot]:
                img = pil_op(op, img, m, int(plan.sign[k, slot]))
        ref.append(from_pil(img))
    assert_within_bound(ours, torch.stack(ref), GEOMETRIC_BOUND, "sub-policies")


def test_sync_free_autoaugment_gives_the_grouped_images_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    x = torch.cat([IMAGES, IMAGES.flip(3)] * 20)
    plan = autoaugment.sample_autoaugment_plan(len(x), gen, x.device)
    for slot in (0, 1):  # every op the policy can fire in a slot fires there, so each op's selection is checked
        in_policy = {sub[1 + 3 * slot] for sub in autoaugment.CIFAR10_POLICY if sub[3 * slot] > 0}
        fired = {autoaugment.CIFAR10_POLICY[p][1 + 3 * slot] for p in plan.policy[plan.applied[:, slot]].tolist()}
        assert fired == in_policy
    grouped = autoaugment.apply_autoaugment_plan(x, plan)
    assert torch.equal(autoaugment.apply_autoaugment_plan(x, plan, sync_free=True), grouped)


def test_autoaugment_draws_its_plan_from_the_generator():
    x = IMAGES
    out = autoaugment.autoaugment_cifar10(x, torch.Generator().manual_seed(3))
    plan = autoaugment.sample_autoaugment_plan(len(x), torch.Generator().manual_seed(3), x.device)
    assert torch.equal(out, autoaugment.apply_autoaugment_plan(x, plan))


# ----------------------------------------------------------------------------------------------------
# Crop, flip, Cutout, normalise


def test_random_crop_flip_covers_all_offsets_and_flips_half_the_images():
    n = 2000
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    content = torch.randint(0, 256, (n, 32, 32), generator=torch.Generator().manual_seed(4))
    # channels 0/1 carry each pixel's row/column + 1 (0 is the zero padding), channel 2 random content
    x = torch.stack([(i + 1).expand(n, 32, 32), (j + 1).expand(n, 32, 32), content], 1).to(torch.uint8)
    out = augment.random_crop_flip(x, torch.Generator().manual_seed(5))
    flipped = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    dy = out[:, 0, 16, 16].long() - 13  # output row r shows padded row dy + r, i.e. source row dy + r - 4
    dx = out[:, 1, 16, 16].long() - torch.where(flipped, 12, 13)
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=9)
        assert len(counts) == 9 and counts.min() > n / 9 - 5 * (n / 9) ** 0.5, counts.tolist()
    assert abs(flipped.double().mean().item() - 0.5) < 0.05
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for k in range(0, n, 50):
        crop = padded[k, :, dy[k] : dy[k] + 32, dx[k] : dx[k] + 32]
        assert torch.equal(out[k], crop.flip(2) if flipped[k] else crop)


def test_cutout_zeroes_one_clipped_16px_square_with_uniform_centre():
    n = 2048
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 0.9 + 0.1
    out = augment.cutout(x, torch.Generator().manual_seed(7))
    hole = out == 0
    assert torch.equal(hole, hole[:, :1].expand_as(hole)), "the hole must cover all channels"
    assert torch.equal(out[~hole], x[~hole]), "pixels outside the hole must be untouched"
    rows, cols = hole[:, 0].any(2), hole[:, 0].any(1)  # [n, 32] each
    assert torch.equal(hole[:, 0], rows.unsqueeze(2) & cols.unsqueeze(1)), "the hole must be one rectangle"
    centres = []
    for covered in (rows, cols):
        first = covered.float().argmax(1)
        length = covered.sum(1)
        last = first + length  # exclusive
        assert torch.all((length == 16) | (first == 0) | (last == 32)), "only border clipping shrinks it"
        assert length.min() >= 8
        centres.append(torch.where(first > 0, first + 8, last - 8))
    for centre in centres:
        counts = torch.bincount(centre, minlength=32)
        assert len(counts) == 32 and counts.min() > n / 32 - 5 * (n / 32) ** 0.5, counts.tolist()


def test_normalize_uses_cifar_mean_and_std_per_channel():
    assert augment.CIFAR_MEAN == (0.4914, 0.4822, 0.4465)
    assert augment.CIFAR_STD == (0.2023, 0.1994, 0.2010)
    mean = torch.tensor(augment.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(augment.CIFAR_STD).view(1, 3, 1, 1)
    assert torch.equal(augment.normalize(mean.expand(2, 3, 4, 4)), torch.zeros(2, 3, 4, 4))
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(augment.normalize(x), (x - mean) / std)


def test_unit_float_and_test_transform_match_totensor_then_normalize():
    unit = augment.to_unit_float(IMAGES)
    assert unit.dtype == torch.float32 and torch.equal(unit, IMAGES.float() / 255)
    assert torch.equal(augment.test_transform(IMAGES), augment.normalize(unit))
    assert torch.equal(augment.test_transform(unit), augment.normalize(unit))


# ----------------------------------------------------------------------------------------------------
# Pipelines


def test_stage_transforms_compose_their_steps_in_spec_order():
    x = torch.cat([IMAGES] * 2)
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    expected = augment.normalize(augment.to_unit_float(augment.random_crop_flip(x, g2)))
    assert torch.equal(augment.stage1_train_transform(x, g1), expected)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    steps = autoaugment.autoaugment_cifar10(augment.random_crop_flip(x, g2), g2)
    expected = augment.normalize(augment.cutout(augment.to_unit_float(steps), g2))
    assert torch.equal(augment.stage2_train_transform(x, g1), expected)


def test_stage2_cutout_hole_is_zero_before_normalisation():
    out = augment.stage2_train_transform(IMAGES, torch.Generator().manual_seed(10))
    zero = augment.normalize(torch.zeros(1, 3, 1, 1))  # the value a cut-out pixel takes
    is_zero = (out == zero).all(1)  # [B, H, W]
    assert is_zero.sum((1, 2)).min() >= 64  # the smallest clipped hole is 8 x 8


def test_transforms_return_expected_dtypes_and_shapes():
    gen = torch.Generator().manual_seed(11)
    shape = IMAGES.shape
    for uint8_step in (augment.random_crop_flip, autoaugment.autoaugment_cifar10):
        out = uint8_step(IMAGES, gen)
        assert out.dtype == torch.uint8 and out.shape == shape
    for float_step in (augment.stage1_train_transform, augment.stage2_train_transform):
        out = float_step(IMAGES, gen)
        assert out.dtype == torch.float32 and out.shape == shape
    assert augment.cutout(IMAGES.float() / 255, gen).dtype == torch.float32


def test_same_seed_gives_same_augmentation_and_other_seed_differs():
    def run(seed):
        return augment.stage2_train_transform(IMAGES, torch.Generator().manual_seed(seed))

    assert torch.equal(run(12), run(12))
    assert not torch.equal(run(12), run(13))


def test_transforms_never_modify_their_input():
    x = IMAGES.clone()
    gen = torch.Generator().manual_seed(14)
    augment.stage1_train_transform(x, gen)
    augment.stage2_train_transform(x, gen)
    for name in autoaugment.OP_NAMES:
        autoaugment.apply_op(name, x, 9, -1)
    assert torch.equal(x, IMAGES)
    unit = x.float() / 255
    before = unit.clone()
    augment.cutout(unit, gen)
    augment.normalize(unit)
    augment.test_transform(unit)
    assert torch.equal(unit, before)
