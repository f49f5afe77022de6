"""K seeds of ResNet-32 as one model, so that one process trains several units of a stage at once.

A training step of ResNet-32 at batch 128 is a few hundred small kernels, each far from filling a large GPU;
processes sharing the GPU mostly take turns. Packed, every kernel is K times wider instead of K times as many:
each convolution becomes a grouped convolution (groups=K), each BatchNorm normalises K*C channels (its
statistics are per channel, hence per seed), the classifiers a batched matmul (CE's linear heads and
LDAM-DRW's cosine ones side by side, so a pack may mix the two methods). Each seed keeps its own
weights, batches and optimizer state: the loss is the sum of the seeds' losses, so each seed's gradient is
its own, and SGD (momentum, weight decay) is elementwise, so one optimizer over the packed parameters is K
optimizers. tests/test_packed.py checks this against K separate models in float64.

A packed model's state dict has the keys of one ResNet-32's, each tensor holding the K seeds' tensors
(`join_states`, `split_state`; a cosine head's weight transposed, and a zero bias beside it where the pack
has linear heads too); so do the optimizer states, so every unit keeps the checkpoints of an unpacked one and
can resume packed or alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import BasicBlock, CosineClassifier, ResNetCifar

RADII = "eps"  # the state key of stage 2's learned radii in a packed optimizer's `names`
HEAD_WEIGHT, HEAD_BIAS = "fc.weight", "fc.bias"  # the classifier's state keys, packed or not


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


class PackedHead(nn.Module):
    """K classifiers, each CE's linear head or LDAM-DRW's cosine head (a pack may mix them): weight [K, C, 64]
    (a cosine head's [64, C] transposed, so that both kinds stack) and, unless every head is cosine, bias
    [K, C], whose rows of cosine heads are masked out (so their gradient is zero and they stay zero)."""

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        cosine = [isinstance(h, CosineClassifier) for h in heads]
        self.cosine_heads = tuple(cosine)
        self.weight = nn.Parameter(torch.stack([h.weight.detach().T if c else h.weight.detach()
                                                for h, c in zip(heads, cosine)]))
        if not all(cosine):
            self.bias = nn.Parameter(torch.stack([torch.zeros_like(self.weight[0, :, 0]) if c else h.bias.detach()
                                                  for h, c in zip(heads, cosine)]))
        # [K, 1, 1]: picks each head's kind in the elementwise ops of a mixed pack; not state, split_state is told
        self.register_buffer("mask", torch.tensor(cosine, device=self.weight.device).view(-1, 1, 1),
                             persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        if not any(self.cosine_heads):
            return torch.baddbmm(self.bias.unsqueeze(1), z, self.weight.transpose(1, 2))
        if all(self.cosine_heads):
            return torch.bmm(F.normalize(z, dim=2), F.normalize(self.weight, dim=2).transpose(1, 2))
        z = torch.where(self.mask, F.normalize(z, dim=2), z)
        weight = torch.where(self.mask, F.normalize(self.weight, dim=2), self.weight)
        return torch.baddbmm(self.bias.masked_fill(self.mask[:, 0], 0).unsqueeze(1), z, weight.transpose(1, 2))


class PackedResNet(nn.Module):
    """K CIFAR ResNets with their own weights, run as one model: a packed batch [B, K*3, H, W] (`pack`) in,
    (features [K, B, 64], logits [K, B, C]) out."""

    def __init__(self, models: Sequence[ResNetCifar]):
        super().__init__()
        self.k = len(models)
        self.conv1, self.bn1 = _packed_conv([m.conv1 for m in models]), _packed_bn([m.bn1 for m in models])
        self.layers = nn.Sequential(*(PackedBlock(blocks) for blocks in zip(*(m.layers for m in models))))
        self.fc = PackedHead([m.fc for m in models])

    @property
    def cosine_heads(self) -> tuple[bool, ...]:
        """Which seeds' heads are cosine (LDAM-DRW's), what `split_state` needs to be told."""
        return self.fc.cosine_heads

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

    @property
    def cosine_heads(self) -> tuple[bool, ...]:
        return (isinstance(self.model.fc, CosineClassifier),)

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


def _join(key: str, values: Sequence[Optional[Tensor]], cosine: Sequence[bool]) -> Tensor:
    """Returns the packed tensor of state `key` from the seeds' tensors (None: a cosine head's missing bias)."""
    if key.endswith("num_batches_tracked"):
        # BatchNorm's step count: one per pack, which BatchNorm with a momentum (ResNet-32's) never reads. It
        # differs between seeds only after stage 2's faithful reload of each seed's best epoch: the first's holds.
        return values[0]
    if key == HEAD_WEIGHT:
        values = [v.T if c else v for v, c in zip(values, cosine, strict=True)]
    elif key == HEAD_BIAS:
        values = [torch.zeros_like(next(v for v in values if v is not None)) if v is None else v for v in values]
    return (torch.stack if _stacked(key) else torch.cat)(list(values))


def _split(key: str, value: Tensor, cosine: Sequence[bool]) -> list[Optional[Tensor]]:
    """Returns the seeds' tensors of state `key` held in a packed tensor (`_join` reversed), None for a cosine
    head's bias, which its unpacked head has not."""
    k = len(cosine)
    if key.endswith("num_batches_tracked"):
        return [value.detach().clone() for _ in range(k)]
    parts = value.unbind(0) if _stacked(key) else value.chunk(k)
    if key == HEAD_WEIGHT:
        return [part.detach().T.clone(memory_format=torch.contiguous_format) if c else part.detach().clone()
                for part, c in zip(parts, cosine)]
    return [None if c and key == HEAD_BIAS else part.detach().clone() for part, c in zip(parts, cosine)]


def join_states(states: Sequence[dict]) -> dict:
    """Returns the state dict of the packed model of K ResNet-32s from theirs (`packed_model`'s keys)."""
    if len(states) == 1:
        return {f"model.{key}": value for key, value in states[0].items()}
    cosine = [HEAD_BIAS not in state for state in states]  # a cosine head has no bias
    keys = dict.fromkeys(key for state in states for key in state)  # the linear heads' bias, where any is
    return {key: _join(key, [state.get(key) for state in states], cosine) for key in keys}


def split_state(state: dict, cosine: Sequence[bool]) -> list[dict]:
    """Returns copies of the K ResNet-32 state dicts held in a packed model's state dict (`join_states`
    reversed): later training steps cannot change them. `cosine` says which seeds' heads are cosine (the
    model's `cosine_heads`)."""
    if len(cosine) == 1:
        return [{key.removeprefix("model."): value.detach().clone() for key, value in state.items()}]
    parts = {key: _split(key, value, cosine) for key, value in state.items()}
    return [{key: seed_parts[i] for key, seed_parts in parts.items() if seed_parts[i] is not None}
            for i in range(len(cosine))]


def _seed_indices(names: Sequence[str], cosine: bool) -> list[int]:
    """Returns the indices in an optimizer over packed parameters of those one seed's optimizer holds, in its
    order: all but the bias where the seed's head is cosine."""
    return [index for index, name in enumerate(names) if not (cosine and name == HEAD_BIAS)]


def split_optimizer_state(state: dict, names: Sequence[str], cosine: Sequence[bool]) -> list[dict]:
    """Returns the K optimizer state dicts (SGD's momentum buffers sliced per seed) of an optimizer over
    packed parameters, `names` their state keys in the optimizer's order (`RADII` for stage 2's radii), and
    `cosine` which seeds' heads are cosine; each as an optimizer over one seed's parameters holds it."""
    k = len(cosine)
    parts = {}
    for index, values in state["state"].items():
        buffer = values.get("momentum_buffer")
        parts[index] = [buffer] * k if buffer is None or k == 1 else _split(names[index], buffer, cosine)
    out = []
    for i in range(k):
        renumber = {index: j for j, index in enumerate(_seed_indices(names, cosine[i]))}
        groups = [{**group, "params": [renumber[p] for p in group["params"] if p in renumber]}
                  for group in state["param_groups"]]
        out.append({"state": {renumber[index]: {**values, "momentum_buffer": parts[index][i]}
                              for index, values in state["state"].items() if index in renumber},
                    "param_groups": groups})
    return out


def join_optimizer_states(states: Sequence[dict], names: Sequence[str], cosine: Sequence[bool]) -> dict:
    """Returns the optimizer state over packed parameters from its seeds' (`split_optimizer_state` reversed)."""
    if len(states) == 1:
        return states[0]
    # per seed, its state of each packed index (None: a cosine head's bias, or no state yet)
    seeds = [{index: state["state"].get(j) for j, index in enumerate(_seed_indices(names, c))}
             for state, c in zip(states, cosine, strict=True)]
    joined = {}
    for index, name in enumerate(names):
        held = [seed.get(index) for seed in seeds]
        values = next((v for v in held if v is not None), None)
        if values is None:
            continue
        buffers = [v.get("momentum_buffer") if v is not None else None for v in held]
        any_buffer = any(b is not None for b in buffers)
        joined[index] = {**values, "momentum_buffer": _join(name, buffers, cosine) if any_buffer else None}
    # the param groups of a seed that holds every parameter (a linear head's, or any when all are cosine)
    full = next((state for state, c in zip(states, cosine) if not c), states[0])
    return {"state": joined, "param_groups": full["param_groups"]}


def parameter_names(model: nn.Module) -> list[str]:
    """Returns the state keys of the model's parameters, in the order an optimizer over them holds them."""
    return [name for name, _ in model.named_parameters()]


# The settings units of a pack may differ in, per stage: stage 1's CE and LDAM-DRW differ in the head and the
# loss, both kept per unit (LDAM-DRW's class weights start at its drw_start_epoch, a setting they share); stage
# 2's faithful and clean modes in the loss's quirks and in which feature epoch the classifier restarts from.
PER_UNIT = {1: ("seed", "method"), 2: ("seed", "mode")}
# The data settings they may differ in: a stage-2 pass is as long at every rho with the class-aware sampler (the
# head class keeps its count), and train_stage2_seeds refuses units whose passes differ.
PER_UNIT_DATA = {1: (), 2: ("rho",)}


def shared_settings(cfgs: Sequence[Any], per_unit: Sequence[str], datas: Optional[Sequence[Any]] = None) -> Any:
    """Returns the settings the units of a pack share (a stage config: the first unit's); raises ValueError
    unless `per_unit` settings (seed, and method in stage 1, mode in stage 2) are all they differ in, and each
    unit differs (in those, or in its data's rho: `datas`, as `unit_names` takes them)."""
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
