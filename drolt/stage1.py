"""Stage 1: cross-entropy pre-training (SPEC §3), or the LDAM-DRW baseline (SPEC §3.1), of one unit or of
several that differ only in their seed and method, packed into one model."""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import speed
from .config import Stage1Config
from .data import LongTailData
from .losses import drw_weights, ldam_loss, ldam_margins
from .model import resnet32
from .packed import (PER_UNIT, join_optimizer_states, join_states, packed_model, parameter_names, resume_epoch,
                     shared_settings, split_optimizer_state, split_state, unit_names)
from .sampling import ShuffledEpochs
from .seeds import stream_seed
from .training import (EpochCallback, StageResult, augment_generator, augmenter, check_finite, evaluate_seeds,
                       improved, packed_batches, set_lr, unit_data)


def lr_at(cfg: Stage1Config, epoch: int) -> float:
    """Returns the LR for 0-based `epoch`: linear warm-up, then x0.01 after each decay epoch (SPEC §3)."""
    k = epoch + 1
    if k <= cfg.warmup_epochs:
        return cfg.lr * k / cfg.warmup_epochs
    return cfg.lr * 0.01 ** sum(k > e for e in cfg.lr_decay_epochs)


def ncm_epoch(cfg: Stage1Config, epoch: int) -> bool:
    """Whether `epoch` passes over the training set for its NCM accuracy: every ncm_every-th and the last."""
    return (epoch + 1) % cfg.ncm_every == 0 or epoch + 1 == cfg.epochs


SeedCallback = Callable[[int, dict, dict], None]  # (index of the seed in the pack, record, state)


def train_stage1(cfg: Stage1Config, data: LongTailData, device: torch.device,
                 on_epoch: Optional[EpochCallback] = None, resume: Optional[dict] = None) -> StageResult:
    """Trains stage 1 from scratch (or from `resume`, a state given to `on_epoch`); returns its result."""
    per_seed = (lambda _, record, state: on_epoch(record, state)) if on_epoch is not None else None
    return train_stage1_seeds([cfg], data, device, per_seed, [resume] if resume is not None else None)[0]


def train_stage1_seeds(cfgs: Sequence[Stage1Config], data: LongTailData, device: torch.device,
                       on_epoch: Optional[SeedCallback] = None,
                       resumes: Optional[Sequence[dict]] = None) -> list[StageResult]:
    """Trains the stage 1 of units that differ only in their seed and method (CE or LDAM-DRW), packed into one
    model (drolt/packed.py; one unit trains its own model, unpacked); returns their results in the order of
    `cfgs`.

    Each seed draws its initialisation, sampling order and augmentation as it would alone, and keeps its
    method's head and loss. `on_epoch(i, record, state)` gets seed i's record and state, the state of an
    unpacked stage 1: `resumes` takes such states (one per seed, all after the same epoch), so a unit can
    resume packed or alone.
    """
    cfg = shared_settings(cfgs, PER_UNIT[1])
    unit_labels = unit_names(cfgs, PER_UNIT[1])  # how logs and errors name the units
    k, ldam = len(cfgs), [c.method == "ldam_drw" for c in cfgs]
    datas = unit_data(data, k)  # every seed's, for the loops that take one per unit
    models = []
    for seed_cfg, cosine in zip(cfgs, ldam):
        torch.manual_seed(stream_seed(seed_cfg.seed, "init"))  # the global generator: torch.nn.init draws from it
        models.append(resnet32(data.num_classes, cosine_head=cosine))
    model = packed_model(models).to(device)
    net = speed.prepare(model, cfg)
    step_net = speed.step_model(model, cfg)
    optimizer = speed.sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.fused_sgd)
    names = parameter_names(model)  # the optimizer's parameters, to split its state per seed
    samplers = [ShuffledEpochs(len(data.train_labels), c.seed) for c in cfgs]
    aug_gens = [augment_generator(device, c.seed) for c in cfgs]
    margins = ldam_margins(data.class_counts).to(device) if any(ldam) else None
    augment = augmenter(cfg, sizes=(cfg.batch_size * cfg.augment_batches,))

    def train_step(x: Tensor, y: Tensor, weights: Optional[Tensor]) -> Tensor:
        # In a CUDA graph the model runs without torch.compile's CUDA graphs, which cannot be recorded inside
        # another, and autocast casts the weights anew in every replay instead of caching the casts.
        with speed.autocast(device, cfg.precision, cache=not cfg.graph_step):
            _, logits = (step_net if cfg.graph_step else net)(x)
            losses = torch.stack([ldam_loss(logits[i], y[i], margins, weights=weights) if ldam[i]
                                  else F.cross_entropy(logits[i], y[i]) for i in range(k)])
        optimizer.zero_grad(set_to_none=True)  # in a recording: the gradients live in the graph's memory
        losses.sum().backward()  # each seed's loss reaches its own weights only: its own gradient
        optimizer.step()
        return losses.detach()
    # graph_step: full batches replay the whole step from one CUDA graph, recorded anew when the learning
    # rate (a number the recording keeps) or the class weights change. Without it no size is recorded.
    step = speed.graphed(train_step, sizes=(cfg.batch_size,) if cfg.graph_step else (), keep_one=True)
    start, histories, bests = 0, [[] for _ in cfgs], [None] * k
    if resumes is not None:
        start = resume_epoch(resumes)
        model.load_state_dict(join_states([r["model"] for r in resumes]))
        speed.load_optimizer_state(optimizer, join_optimizer_states([r["optimizer"] for r in resumes], names, ldam))
        for sampler, gen, resume in zip(samplers, aug_gens, resumes):
            sampler.load_state_dict(resume["sampler"])
            gen.set_state(resume["aug_gen"])
        # copies: the loop extends them, and one state may be resumed from more than once
        histories, bests = copy.deepcopy([r["history"] for r in resumes]), copy.deepcopy([r["best"] for r in resumes])

    n = len(data.train_labels)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = set_lr(optimizer, lr_at(cfg, epoch))
        weights = drw_weights(data.class_counts, epoch, cfg.drw_start_epoch) if any(ldam) else None
        weights = weights.to(device) if weights is not None else None
        model.train()
        # Summed on the device and read once per epoch: a .item() per batch would sync the GPU every step.
        loss_sums = torch.zeros(k, device=device)
        streams = [sampler.next_pass().to(device) for sampler in samplers]
        for x, y in packed_batches(datas, streams, cfg.batch_size, aug_gens, cfg.augment_batches, augment=augment):
            losses = step(speed.model_input(x, cfg.channels_last), y, weights, key=lr)
            loss_sums += losses * y.shape[1]
        train_losses = [loss_sum / n for loss_sum in loss_sums.tolist()]
        check_finite(train_losses, 1, epoch, unit_labels)
        train_time = time.perf_counter() - t0

        reports = evaluate_seeds(model, net, datas, cfg, ncm=ncm_epoch(cfg, epoch))
        epoch_time = time.perf_counter() - t0
        states = split_state(model.state_dict(), ldam)
        optimizer_states = split_optimizer_state(optimizer.state_dict(), names, ldam) if on_epoch else [None] * k
        for i, (history, report, state) in enumerate(zip(histories, reports, states)):
            record = {"stage": 1, "epoch": epoch, "lr": lr, "train_loss": train_losses[i], **report,
                      # a pack trains every seed's n images in this time
                      "train_images_per_s": n / train_time, "epoch_time": epoch_time, "packed_seeds": k}
            history.append(record)
            if improved(record, bests[i], "top1"):
                bests[i] = {"record": record, "model": state}
            if on_epoch is not None:
                on_epoch(i, record, {"stage": 1, "epoch": epoch + 1, "model": state,
                                     "optimizer": optimizer_states[i], "sampler": samplers[i].state_dict(),
                                     "aug_gen": aug_gens[i].get_state(), "history": history, "best": bests[i]})

    last_states = split_state(model.state_dict(), ldam)
    if any(math.isnan(best["record"]["ncm_top1"]) for best in bests):
        # ncm_every skipped a best epoch's NCM: evaluated now from its weights, as it would have been then
        # (a best kept in a resume state was read to the CPU, one found since lies on the device)
        model.load_state_dict(join_states([{key: value.to(device) for key, value in best["model"].items()}
                                           for best in bests]))
        for best, history, report in zip(bests, histories, evaluate_seeds(model, net, datas, cfg)):
            if math.isnan(best["record"]["ncm_top1"]):
                ncm = {key: value for key, value in report.items() if key.startswith("ncm_")}
                best["record"].update(ncm)
                history[best["record"]["epoch"]].update(ncm)
    return [StageResult(history=history, last=history[-1], best=best["record"],
                        selected="best" if cfg.mode == "faithful" else "last",
                        best_state=best["model"], last_state=last_state)
            for history, best, last_state in zip(histories, bests, last_states)]
