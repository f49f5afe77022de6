"""Stage 1: cross-entropy pre-training (SPEC §3), or the LDAM-DRW baseline (SPEC §3.1)."""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import speed
from .config import Stage1Config
from .data import LongTailData
from .losses import drw_weights, ldam_loss, ldam_margins
from .model import resnet32
from .sampling import ShuffledEpochs
from .training import (EpochCallback, StageResult, augmented_batches, augmenter, check_finite, clone_state,
                       device_generator, evaluate, improved, set_lr)


def lr_at(cfg: Stage1Config, epoch: int) -> float:
    """Returns the LR for 0-based `epoch`: linear warm-up, then x0.01 after each decay epoch (SPEC §3)."""
    k = epoch + 1
    if k <= cfg.warmup_epochs:
        return cfg.lr * k / cfg.warmup_epochs
    return cfg.lr * 0.01 ** sum(k > e for e in cfg.lr_decay_epochs)


def train_stage1(cfg: Stage1Config, data: LongTailData, device: torch.device,
                 on_epoch: Optional[EpochCallback] = None, resume: Optional[dict] = None) -> StageResult:
    """Trains stage 1 from scratch (or from `resume`, a state given to `on_epoch`); returns its result."""
    cfg.validate()
    ldam = cfg.method == "ldam_drw"
    torch.manual_seed(cfg.seed)  # model init
    model = resnet32(data.num_classes, cosine_head=ldam).to(device)
    net = speed.prepare(model, cfg)
    step_net = speed.step_model(model, cfg)
    optimizer = speed.sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.fused_sgd)
    sampler = ShuffledEpochs(len(data.train_labels), cfg.seed)
    aug_gen = device_generator(device, cfg.seed)
    margins = ldam_margins(data.class_counts).to(device) if ldam else None
    augment = augmenter(cfg, sizes=(cfg.batch_size * cfg.augment_batches,))

    def train_step(x: Tensor, y: Tensor, weights: Optional[Tensor]) -> Tensor:
        # In a CUDA graph the model runs without torch.compile's CUDA graphs, which cannot be recorded inside
        # another, and autocast casts the weights anew in every replay instead of caching the casts.
        with speed.autocast(device, cfg.precision, cache=not cfg.graph_step):
            _, logits = (step_net if cfg.graph_step else net)(x)
            loss = ldam_loss(logits, y, margins, weights=weights) if ldam else F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)  # in a recording: the gradients live in the graph's memory
        loss.backward()
        optimizer.step()
        return loss.detach()
    # graph_step: full batches replay the whole step from one CUDA graph, recorded anew when the learning
    # rate (a number the recording keeps) or the class weights change. Without it no size is recorded.
    step = speed.graphed(train_step, sizes=(cfg.batch_size,) if cfg.graph_step else (), keep_one=True)
    start, history, best = 0, [], None
    if resume is not None:
        model.load_state_dict(resume["model"])
        speed.load_optimizer_state(optimizer, resume["optimizer"])
        sampler.load_state_dict(resume["sampler"])
        aug_gen.set_state(resume["aug_gen"])
        start, history, best = resume["epoch"], resume["history"], resume["best"]

    n = len(data.train_labels)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = set_lr(optimizer, lr_at(cfg, epoch))
        weights = drw_weights(data.class_counts, epoch, cfg.drw_start_epoch) if ldam else None
        weights = weights.to(device) if weights is not None else None
        model.train()
        # Summed on the device and read once per epoch: a .item() per batch would sync the GPU every step.
        loss_sum = torch.zeros((), device=device)
        for x, y in augmented_batches(data, sampler.next_pass().to(device), cfg.batch_size, aug_gen,
                                      cfg.augment_batches, augment=augment):
            loss = step(speed.model_input(x, cfg.channels_last), y, weights, key=lr)
            loss_sum += loss * len(y)
        train_loss = loss_sum.item() / n
        check_finite(train_loss, 1, epoch)
        train_time = time.perf_counter() - t0

        with_ncm = (epoch + 1) % cfg.ncm_every == 0 or epoch + 1 == cfg.epochs
        record = {"stage": 1, "epoch": epoch, "lr": lr, "train_loss": train_loss,
                  **evaluate(model, net, data, cfg, ncm=with_ncm),
                  "train_images_per_s": n / train_time, "epoch_time": time.perf_counter() - t0}
        history.append(record)
        if improved(record, best, "top1"):
            best = {"record": record, "model": clone_state(model)}
        if on_epoch is not None:
            on_epoch(record, {"stage": 1, "epoch": epoch + 1, "model": clone_state(model),
                              "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                              "aug_gen": aug_gen.get_state(), "history": history, "best": best})

    last_state = clone_state(model)
    if math.isnan(best["record"]["ncm_top1"]):
        # ncm_every skipped the best epoch's NCM: evaluated now from its weights, as it would have been then
        model.load_state_dict(best["model"])
        ncm = {k: v for k, v in evaluate(model, net, data, cfg).items() if k.startswith("ncm_")}
        model.load_state_dict(last_state)
        best["record"].update(ncm)
        history[best["record"]["epoch"]].update(ncm)
    return StageResult(history=history, last=history[-1], best=best["record"],
                       selected="best" if cfg.mode == "faithful" else "last",
                       best_state=best["model"], last_state=last_state)
