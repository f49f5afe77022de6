"""Stage 2: DRO-LT (SPEC §4.5) — robust-loss feature training on class-aware batches, then classifier re-training.

Each epoch: (1) a centroid bank from one eval-mode pass over the augmented training stream (in classifier
epochs only its sampler pass and augmentation draws are spent), (2) one training pass, (3) an evaluation bank
of the un-augmented LT training set and (4) the test metrics with NCM.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from . import speed
from .augment import ApplyDraws, Draws, apply_draws, draw, take_draws
from .centroids import class_centroids
from .config import Stage2Config
from .data import LongTailData
from .losses import class_weights, robust_loss, weighted_cross_entropy
from .model import ResNetCifar, resnet32
from .sampling import make_sampler
from .training import (EpochCallback, StageResult, augmented_batches, augmenter, check_finite, clone_state,
                       device_generator, evaluate, extract, improved)


# How the centroid banks draw their views, kept in every resume state: earlier versions drew them per
# eval_batch_size chunk, and a stage 2 they started mixes the two when resumed (drolt.unit warns).
BANK_DRAWS = "per_pass"


def _weights(counts: list[int], kind: str, device: torch.device) -> Optional[Tensor]:
    return None if kind == "none" else class_weights(counts, kind).to(device)


def train_stage2(cfg: Stage2Config, data: LongTailData, stage1_state: dict, device: torch.device,
                 on_epoch: Optional[EpochCallback] = None, resume: Optional[dict] = None) -> StageResult:
    """Trains DRO-LT from stage-1 weights (or continues `resume`); returns its result."""
    cfg.validate()
    C = data.num_classes
    model: ResNetCifar = resnet32(C).to(device)
    model.load_state_dict(stage1_state)
    net = speed.prepare(model, cfg)
    step_net = speed.step_model(model, cfg)
    eps = nn.Parameter(torch.full((C,), cfg.eps_init, device=device))  # learned radii, one per class
    backbone = [p for name, p in model.named_parameters() if not name.startswith("fc.")]
    opt_features = speed.sgd(backbone + [eps], cfg.feature_lr, cfg.momentum, cfg.weight_decay, cfg.fused_sgd)
    opt_classifier = speed.sgd(model.fc.parameters(), cfg.classifier_lr, cfg.momentum, cfg.weight_decay,
                               cfg.fused_sgd)
    sampler = make_sampler(cfg.sampler, data.train_labels, C, cfg.seed)
    aug_gen = device_generator(device, cfg.seed)
    ce_weights = _weights(data.class_counts, cfg.ce_weights, device)
    classifier_weights = _weights(data.class_counts, cfg.classifier_weights, device)
    first_classifier_epoch = cfg.epochs - cfg.classifier_epochs
    loss_fn = speed.compiled(feature_losses, sizes=(cfg.batch_size,)) if cfg.compile_loss else feature_losses
    augment = augmenter(cfg, sizes=(cfg.batch_size * cfg.augment_batches, cfg.eval_batch_size))

    def train_step(x: Tensor, y: Tensor, centroids: Tensor) -> Tensor:
        # In a CUDA graph the model runs without torch.compile's CUDA graphs, which cannot be recorded inside
        # another, and autocast casts the weights anew in every replay instead of caching the casts.
        with speed.autocast(device, cfg.precision, cache=not cfg.graph_step):
            z, logits = (step_net if cfg.graph_step else net)(x)
            losses = loss_fn(z, logits, y, centroids, eps, ce_weights, cfg.temperature, cfg.mode, cfg.ce_weight,
                             cfg.robust_weight)
        opt_features.zero_grad(set_to_none=True)  # in a recording: the gradients live in the graph's memory
        losses[0].backward()
        opt_features.step()
        if cfg.eps_nonneg:
            with torch.no_grad():
                eps.clamp_(min=0)
        return torch.stack(losses).detach()
    # graph_step: full batches of the feature epochs replay the whole step from one CUDA graph (the learning
    # rate is constant; each batch's images, labels and the pass's centroids are copied in).
    step = speed.graphed(train_step, sizes=(cfg.batch_size,) if cfg.graph_step else ())
    start, history = 0, []
    best_features = best_classifier = None  # best test NCM in the feature phase, best top-1 afterwards
    if resume is not None:
        model.load_state_dict(resume["model"])
        with torch.no_grad():
            eps.copy_(resume["eps"])
        speed.load_optimizer_state(opt_features, resume["opt_features"])
        speed.load_optimizer_state(opt_classifier, resume["opt_classifier"])
        sampler.load_state_dict(resume["sampler"])
        aug_gen.set_state(resume["aug_gen"])
        start, history = resume["epoch"], resume["history"]
        best_features, best_classifier = resume["best_features"], resume["best_classifier"]

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        feature_phase = epoch < first_classifier_epoch
        if epoch == first_classifier_epoch and cfg.mode == "faithful" and best_features is not None:
            # QUIRK (faithful): the classifier is re-trained on the feature epoch chosen by test NCM accuracy.
            # The reference's checkpoint holds the model alone: the radii stay as the last feature epoch left them.
            model.load_state_dict(best_features["model"])
        stream = sampler.next_pass().to(device)
        if feature_phase:
            centroids = centroid_bank(model, net, data, stream, cfg, aug_gen, augment)
            stream = sampler.next_pass().to(device)
            losses = feature_epoch(model, data, stream, centroids, cfg, step, aug_gen, augment)
            lr = cfg.feature_lr
        else:
            # Every epoch of the reference builds the centroid bank, unused here: its pass and augmentation
            # draws are spent as it spends them, so the classifier trains on the samples and views it would.
            bank_draws(data, stream, cfg, aug_gen)
            stream = sampler.next_pass().to(device)
            losses = classifier_epoch(model, data, stream, cfg, opt_classifier, classifier_weights, aug_gen, augment)
            lr = cfg.classifier_lr
        check_finite(losses["loss"], 2, epoch)
        train_time = time.perf_counter() - t0

        record = {"stage": 2, "epoch": epoch, "phase": "feature" if feature_phase else "classifier",
                  "lr": lr, **losses, **evaluate(model, net, data, cfg),
                  "radii": eps.detach().cpu().tolist(),
                  "train_images_per_s": len(stream) * (2 if feature_phase else 1) / train_time,
                  "epoch_time": time.perf_counter() - t0}
        history.append(record)
        if feature_phase and improved(record, best_features, "ncm_top1"):
            best_features = {"record": record, "model": clone_state(model)}
        if not feature_phase and improved(record, best_classifier, "top1"):
            best_classifier = {"record": record, "model": clone_state(model)}
        if on_epoch is not None:
            on_epoch(record, {"stage": 2, "epoch": epoch + 1, "bank_draws": BANK_DRAWS,
                              "model": clone_state(model), "eps": eps.detach().clone(),
                              "opt_features": opt_features.state_dict(),
                              "opt_classifier": opt_classifier.state_dict(), "sampler": sampler.state_dict(),
                              "aug_gen": aug_gen.get_state(), "history": history,
                              "best_features": best_features, "best_classifier": best_classifier})

    # "Best on test" is the best top-1 among classifier epochs (the model the reference reports); without
    # classifier epochs it is the feature epoch with the best test NCM accuracy.
    best = best_classifier or best_features
    return StageResult(history=history, last=history[-1], best=best["record"],
                       selected="best" if cfg.mode == "faithful" else "last",
                       best_state=best["model"], last_state=clone_state(model))


@torch.no_grad()
def centroid_bank(model: nn.Module, net: Callable, data: LongTailData, stream: Tensor, cfg: Stage2Config,
                  gen: torch.Generator, augment: ApplyDraws = apply_draws) -> Tensor:
    """Returns [C,64] class centroids of eval-mode features over one augmented pass of the training stream."""
    model.eval()
    draws = bank_draws(data, stream, cfg, gen)
    # Chunks of eval_batch_size images take their slice of the pass's draws: the images do not depend on it.
    z, _ = extract(net, torch.arange(len(stream), device=stream.device), cfg.eval_batch_size,
                   lambda pos: augment(data.train_images[stream[pos]], take_draws(draws, pos)), cfg)
    return class_centroids(z, data.train_labels[stream], data.num_classes)


def bank_draws(data: LongTailData, stream: Tensor, cfg: Stage2Config, gen: torch.Generator) -> Draws:
    """Returns the augmentation draws of a centroid-bank pass over `stream`, made at once: every epoch spends
    them, also a classifier epoch that builds no bank (as the reference builds one every epoch)."""
    return draw(len(stream), gen, stream.device, cfg.autoaugment, cfg.cutout, image_size=data.train_images.shape[2])


def feature_losses(z: Tensor, logits: Tensor, y: Tensor, centroids: Tensor, eps: Tensor,
                   ce_weights: Optional[Tensor], temperature: float, mode: str, ce_weight: float,
                   robust_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (loss, CE, robust) of a feature-phase batch: loss = ce_weight * CE_w + robust_weight * robust."""
    ce = weighted_cross_entropy(logits, y, ce_weights)
    robust = robust_loss(z, y, centroids, eps, temperature, mode)
    return ce_weight * ce + robust_weight * robust, ce, robust


def feature_epoch(model: nn.Module, data: LongTailData, stream: Tensor, centroids: Tensor, cfg: Stage2Config,
                  step: Callable[[Tensor, Tensor, Tensor], Tensor], gen: torch.Generator,
                  augment: ApplyDraws = apply_draws) -> dict:
    """One pass training the backbone and radii with CE_w + robust loss, classifier frozen; returns mean losses.

    `step(x, y, centroids)` makes one optimizer step and returns the batch's (loss, CE, robust)."""
    model.train()
    model.fc.requires_grad_(False)
    sums = torch.zeros(3, device=stream.device)  # loss, ce, robust; read once per epoch
    for x, y in augmented_batches(data, stream, cfg.batch_size, gen, cfg.augment_batches, cfg.autoaugment,
                                  cfg.cutout, augment):
        sums += step(speed.model_input(x, cfg.channels_last), y, centroids) * len(y)
    model.fc.requires_grad_(True)
    loss, ce, robust = (sums / len(stream)).tolist()
    return {"loss": loss, "ce_loss": ce, "robust_loss": robust}


def classifier_epoch(model: nn.Module, data: LongTailData, stream: Tensor, cfg: Stage2Config,
                     optimizer: torch.optim.Optimizer, weights: Optional[Tensor], gen: torch.Generator,
                     augment: ApplyDraws = apply_draws) -> dict:
    """One pass re-training only the linear classifier, the whole model in eval mode; returns the mean loss."""
    model.eval()
    loss_sum = torch.zeros((), device=stream.device)
    for x, y in augmented_batches(data, stream, cfg.batch_size, gen, cfg.augment_batches, cfg.autoaugment,
                                  cfg.cutout, augment):
        x = speed.model_input(x, cfg.channels_last)
        with speed.autocast(stream.device, cfg.precision):
            with torch.no_grad():  # the backbone is frozen: no graph through it
                z = model.features(x)
            loss = weighted_cross_entropy(model.fc(z), y, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
    loss = loss_sum.item() / len(stream)
    return {"loss": loss, "ce_loss": loss, "robust_loss": float("nan")}
