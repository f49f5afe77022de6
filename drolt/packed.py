"""K seeds of ResNet-32 as one model, so that one process trains several units of a stage at once.

A training step of ResNet-32 at batch 128 is a few hundred small kernels, each far from filling a large GPU;
processes sharing the GPU mostly take turns. Packed, every kernel is K times wider instead of K times as many:
each convolution becomes a grouped convolution (groups=K), each BatchNorm normalises K*C channels (its
statistics are per channel, hence per seed), the classifier a batched matmul. Each seed keeps its own
weights, batches and optimizer state: the loss is the sum of the seeds' losses, so each seed's gradient is
its own, and SGD (momentum, weight decay) is elementwise, so one optimizer over the packed parameters is K
optimizers. tests/test_packed.py checks this against K separate models in float64.

A packed model's state dict has the keys of one ResNet-32's, each tensor holding the K seeds' tensors
(`join_states`, `split_state`); so do the optimizer states, so every unit keeps the checkpoints of an
unpacked one and can resume packed or alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import BasicBlock, CosineClassifier, ResNetCifar

RADII = "eps"  # the state key of stage 2's learned radii in a packed optimizer's `names`


def pack(x: Tensor) -> Tensor:
    """Returns K batches [K, B, C, H, W] as one packed batch [B, K*C, H, W] (seed i's image j in channels
    [C*i, C*i + C) of row j), the input of a packed model."""
    k, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, k * c, h, w)


def _packed_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """Returns one grouped convolution computing each of `convs` on its own block of channels."""
    c = convs[0]
    if c.bias is not None or c.dilation != (1, 1) or c.groups != 1:  # what the packing below leaves out
        raise ValueError("only ResNet-32's convolutions pack (no bias, no dilation, not grouped)")
    packed = nn.Conv2d(len(convs) * c.in_channels, len(convs) * c.out_channels, c.kernel_size, c.stride,
                       c.padding, groups=len(convs), bias=False, device=c.weight.device, dtype=c.weight.dtype)
    packed.weight.data.copy_(torch.cat([conv.weight.detach() for conv in convs]))
    return packed


def _packed_bn(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """Returns one BatchNorm over the channels of all `bns`: its statistics are per channel, so per seed."""
    bn = bns[0]
    packed = nn.BatchNorm2d(len(bns) * bn.num_features, bn.eps, bn.momentum, device=bn.weight.device,
                            dtype=bn.weight.dtype)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(packed, name).data.copy_(torch.cat([getattr(bn, name).detach() for bn in bns]))
    return packed


class PackedBlock(nn.Module):
    """K BasicBlocks as one; the option-A shortcut pads each seed's channels, not the packed ones."""

    def __init__(self, blocks: Sequence[BasicBlock]):
        super().__init__()
        self.k, self.pad, self.downsample = len(blocks), blocks[0].pad, blocks[0].downsample
        self.conv1, self.bn1 = _packed_conv([b.conv1 for b in blocks]), _packed_bn([b.bn1 for b in blocks])
        self.conv2, self.bn2 = _packed_conv([b.conv2 for b in blocks]), _packed_bn([b.bn2 for b in blocks])

    def shortcut(self, x: Tensor) -> Tensor:
        if not self.downsample:
            return x
        # the 5-d pad returns a plain layout: give back the channels-last one the plain block keeps
        layout = torch.channels_last if x.stride(1) == 1 else torch.contiguous_format
        x = x[:, :, ::2, ::2]
        b, kc, h, w = x.shape
        padded = F.pad(x.reshape(b, self.k, kc // self.k, h, w), (0, 0, 0, 0, self.pad, self.pad))
        return padded.reshape(b, -1, h, w).contiguous(memory_format=layout)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PackedLinear(nn.Module):
    """K linear heads: weight [K, C, 64], bias [K, C]."""

    def __init__(self, heads: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))
        self.bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]))

    def forward(self, z: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), z, self.weight.transpose(1, 2))


class PackedCosine(nn.Module):
    """K cosine heads (LDAM-DRW's): weight [K, 64, C]."""

    def __init__(self, heads: Sequence[CosineClassifier]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))

    def forward(self, z: Tensor) -> Tensor:
        return torch.bmm(F.normalize(z, dim=2), F.normalize(self.weight, dim=1))


class PackedResNet(nn.Module):
    """K CIFAR ResNets with their own weights, run as one model: a packed batch [B, K*3, H, W] (`pack`) in,
    (features [K, B, 64], logits [K, B, C]) out."""

    def __init__(self, models: Sequence[ResNetCifar]):
        super().__init__()
        self.k = len(models)
        self.conv1, self.bn1 = _packed_conv([m.conv1 for m in models]), _packed_bn([m.bn1 for m in models])
        self.layers = nn.Sequential(*(PackedBlock(blocks) for blocks in zip(*(m.layers for m in models))))
        heads = [m.fc for m in models]
        self.fc = PackedCosine(heads) if isinstance(heads[0], CosineClassifier) else PackedLinear(heads)

    def features(self, x: Tensor) -> Tensor:
        """Every seed's 64-d feature z: [K, B, 64]."""
        b = x.shape[0]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).reshape(b, self.k, -1).transpose(0, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.features(x)
        return z, self.fc(z)


class OneSeed(nn.Module):
    """One model seen as a pack of one: the same input as `pack` makes for K = 1, outputs with a seed
    dimension of 1. The model itself runs, unchanged: an unpacked unit computes what it always did."""

    def __init__(self, model: ResNetCifar):
        super().__init__()
        self.model = model

    @property
    def fc(self) -> nn.Module:
        """The model's head; it takes features with the seed dimension too ([1, B, 64])."""
        return self.model.fc

    def features(self, x: Tensor) -> Tensor:
        return self.model.features(x).unsqueeze(0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, logits = self.model(x)
        return z.unsqueeze(0), logits.unsqueeze(0)


def packed_model(models: Sequence[ResNetCifar]) -> nn.Module:
    """Returns the models as one: `OneSeed` for one, `PackedResNet` for several."""
    return OneSeed(models[0]) if len(models) == 1 else PackedResNet(models)


def _stacked(key: str) -> bool:
    # the heads and stage 2's radii gain a seed dimension in front; the rest is concatenated along dim 0
    return key.startswith("fc.") or key == RADII


def _join(key: str, values: Sequence[Tensor]) -> Tensor:
    """Returns the packed tensor of state `key` from the seeds' tensors."""
    if key.endswith("num_batches_tracked"):
        # BatchNorm's step count: one per pack, which BatchNorm with a momentum (ResNet-32's) never reads. It
        # differs between seeds only after stage 2's faithful reload of each seed's best epoch: the first's holds.
        return values[0]
    return (torch.stack if _stacked(key) else torch.cat)(list(values))


def _split(key: str, value: Tensor, k: int) -> list[Tensor]:
    """Returns the K seeds' tensors of state `key` held in a packed tensor (`_join` reversed)."""
    if key.endswith("num_batches_tracked"):
        return [value.detach().clone() for _ in range(k)]
    return [part.detach().clone() for part in (value.unbind(0) if _stacked(key) else value.chunk(k))]


def join_states(states: Sequence[dict]) -> dict:
    """Returns the state dict of the packed model of K ResNet-32s from theirs (`packed_model`'s keys)."""
    if len(states) == 1:
        return {f"model.{key}": value for key, value in states[0].items()}
    return {key: _join(key, [state[key] for state in states]) for key in states[0]}


def split_state(state: dict, k: int) -> list[dict]:
    """Returns copies of the K ResNet-32 state dicts held in a packed model's state dict (`join_states`
    reversed): later training steps cannot change them."""
    if k == 1:
        return [{key.removeprefix("model."): value.detach().clone() for key, value in state.items()}]
    parts = {key: _split(key, value, k) for key, value in state.items()}
    return [{key: seed_parts[i] for key, seed_parts in parts.items()} for i in range(k)]


def split_optimizer_state(state: dict, names: Sequence[str], k: int) -> list[dict]:
    """Returns the K optimizer state dicts (SGD's momentum buffers sliced per seed) of an optimizer over
    packed parameters, `names` their state keys in the optimizer's order (`RADII` for stage 2's radii); each
    as an optimizer over one seed's parameters holds it (the parameters' order is the same)."""
    out: list[dict] = [{"state": {}, "param_groups": state["param_groups"]} for _ in range(k)]
    for index, values in state["state"].items():
        buffer = values.get("momentum_buffer")
        parts = [buffer] * k if buffer is None or k == 1 else _split(names[index], buffer, k)
        for seed_state, part in zip(out, parts):
            seed_state["state"][index] = {**values, "momentum_buffer": part}
    return out


def join_optimizer_states(states: Sequence[dict], names: Sequence[str]) -> dict:
    """Returns the optimizer state over packed parameters from its seeds' (`split_optimizer_state` reversed)."""
    if len(states) == 1:
        return states[0]
    joined = {}
    for index, values in states[0]["state"].items():
        buffers = [state["state"][index].get("momentum_buffer") for state in states]
        joined[index] = {**values, "momentum_buffer": None if buffers[0] is None else _join(names[index], buffers)}
    return {"state": joined, "param_groups": states[0]["param_groups"]}


def parameter_names(model: nn.Module) -> list[str]:
    """Returns the state keys of the model's parameters, in the order an optimizer over them holds them."""
    return [name for name, _ in model.named_parameters()]


# The settings units of a pack may differ in, per stage: stage 2's faithful and clean modes differ only in the
# loss's quirks and in which feature epoch the classifier restarts from, both kept per unit.
PER_UNIT = {1: ("seed",), 2: ("seed", "mode")}
# The data settings they may differ in: a stage-2 pass is as long at every rho with the class-aware sampler (the
# head class keeps its count), and train_stage2_seeds refuses units whose passes differ.
PER_UNIT_DATA = {1: (), 2: ("rho",)}


def shared_settings(cfgs: Sequence[Any], per_unit: Sequence[str], datas: Optional[Sequence[Any]] = None) -> Any:
    """Returns the settings the units of a pack share (a stage config: the first unit's); raises ValueError
    unless `per_unit` settings (seed, and in stage 2 mode) are all they differ in, and each unit differs (in
    those, or in its data's rho: `datas`, as `unit_names` takes them)."""
    if not cfgs:
        raise ValueError("no settings given: a pack trains at least one unit")
    for cfg in cfgs:
        cfg.validate()
    names = unit_names(cfgs, per_unit, datas)
    if len(set(names)) < len(names):
        differ = [*per_unit, *(["rho"] if datas is not None else [])]
        raise ValueError(f"units packed into one model must differ in {' or '.join(differ)}; got {names}")
    shared = cfgs[0]
    for cfg, name in zip(cfgs[1:], names[1:]):
        if dataclasses.replace(cfg, **{key: getattr(shared, key) for key in per_unit}) != shared:
            changed = [f.name for f in dataclasses.fields(cfg) if f.name not in per_unit
                       and getattr(cfg, f.name) != getattr(shared, f.name)]
            raise ValueError(f"units packed into one model may differ only in {', '.join(per_unit)}; {name} "
                             f"differs from {names[0]} in {', '.join(changed)}: train them apart")
    return cfgs[0]


def unit_names(cfgs: Sequence[Any], per_unit: Sequence[str], datas: Optional[Sequence[Any]] = None) -> list[str]:
    """Returns how logs and errors name each unit of a pack: its seed, and its other `per_unit` settings
    where the pack mixes them ("seed 0 clean"), and its rho where `datas` (each unit's data or data settings)
    mix rhos ("seed 0 clean rho 50")."""
    mixed = [key for key in per_unit if key != "seed" and len({getattr(cfg, key) for cfg in cfgs}) > 1]
    rhos = [f"rho {d.rho:g}" for d in datas] if datas is not None and len({d.rho for d in datas}) > 1 else []
    return [" ".join([f"seed {cfg.seed}", *(str(getattr(cfg, key)) for key in mixed), *rhos[i:i + 1]])
            for i, cfg in enumerate(cfgs)]


def resume_epoch(resumes: Sequence[dict]) -> int:
    """Returns the epoch every seed's state resumes after; raises ValueError when they differ."""
    epochs = [r["epoch"] for r in resumes]
    if len(set(epochs)) > 1:
        raise ValueError(f"seeds packed into one model resume together, but their states are after epochs {epochs}: "
                         "resume them apart, or as packs of the seeds at the same epoch")
    return epochs[0]
