"""Stage 2: DRO-LT (SPEC §4.5) — robust-loss feature training on class-aware batches, then classifier re-training.

Each epoch: (1) a centroid bank from one eval-mode pass over the augmented training stream (in classifier
epochs only its sampler pass and augmentation draws are spent), (2) one training pass, (3) an evaluation bank
of the un-augmented LT training set and (4) the test metrics with NCM.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Optional, Sequence, Sized

import torch
from torch import Tensor, nn

from . import speed
from .augment import ApplyDraws, Draws, apply_draws, draw, take_draws
from .centroids import class_centroids
from .config import Stage2Config
from .data import LongTailData
from .losses import class_weights, robust_loss, weighted_cross_entropy
from .model import resnet32
from .packed import (PER_UNIT, RADII, join_optimizer_states, join_states, packed_model, parameter_names,
                     resume_epoch, shared_settings, split_optimizer_state, split_state, unit_names)
from .sampling import make_sampler
from .training import (EpochCallback, StageResult, augment_generator, augmenter, check_finite, evaluate_seeds,
                       extract_seeds, improved, join_views, packed_batches, unit_data)
from .stage1 import SeedCallback


# How the centroid banks draw their views, kept in every resume state: earlier versions drew them per
# eval_batch_size chunk, and a stage 2 they started mixes the two when resumed (drolt.unit warns).
BANK_DRAWS = "per_pass"


def _weights(counts: list[int], kind: str, device: torch.device) -> Optional[Tensor]:
    return None if kind == "none" else class_weights(counts, kind).to(device)


def _check_packable(datas: Sequence[LongTailData], samplers: Sequence[Sized], names: Sequence[str]) -> None:
    """Raises ValueError unless the units' data sets can train packed: one dataset, passes of one length."""
    if len({(d.name, d.num_classes) for d in datas}) > 1:
        raise ValueError(f"units packed into one model train on one dataset; got {sorted({d.name for d in datas})}: "
                         "train them apart")
    lengths = [len(s) for s in samplers]
    if len(set(lengths)) > 1:
        raise ValueError("units packed into one model take their batches in step, so their passes must be of one "
                         f"length; got {dict(zip(names, lengths))} (a shuffled pass is as long as the rho's data "
                         "set; the class-aware one is not): train them apart")


def train_stage2(cfg: Stage2Config, data: LongTailData, stage1_state: dict, device: torch.device,
                 on_epoch: Optional[EpochCallback] = None, resume: Optional[dict] = None) -> StageResult:
    """Trains DRO-LT from stage-1 weights (or continues `resume`); returns its result."""
    per_seed = (lambda _, record, state: on_epoch(record, state)) if on_epoch is not None else None
    return train_stage2_seeds([cfg], data, [stage1_state], device, per_seed,
                              [resume] if resume is not None else None)[0]


def train_stage2_seeds(cfgs: Sequence[Stage2Config], data: LongTailData | Sequence[LongTailData],
                       stage1_states: Sequence[dict], device: torch.device, on_epoch: Optional[SeedCallback] = None,
                       resumes: Optional[Sequence[dict]] = None) -> list[StageResult]:
    """Trains the stage 2 of units that differ only in their seed and mode (and the stage 1 each starts from),
    packed into one model as `train_stage1_seeds` packs stage 1; returns their results in the order of `cfgs`.
    `data` is the units' data set, or one per unit: units of one dataset at other rhos pack too, their
    class-aware passes being of one length (the head class's count times the classes).

    Each unit keeps its own radii, class-aware sampling, augmentation draws, centroid banks and mode (the
    robust loss's quirks, the faithful restart of the classifier phase, what it reports). `on_epoch(i,
    record, state)` gets unit i's record and the state of an unpacked stage 2, which `resumes` takes.
    """
    datas = unit_data(data, len(cfgs))
    cfg = shared_settings(cfgs, PER_UNIT[2], datas)
    unit_labels = unit_names(cfgs, PER_UNIT[2], datas)  # how logs and errors name the units
    samplers = [make_sampler(cfg.sampler, d.train_labels, d.num_classes, c.seed) for c, d in zip(cfgs, datas,
                                                                                                strict=True)]
    _check_packable(datas, samplers, unit_labels)
    k, C = len(cfgs), datas[0].num_classes
    models = [resnet32(C) for _ in cfgs]
    for seed_model, state in zip(models, stage1_states):
        seed_model.load_state_dict(state)
    model = packed_model(models).to(device)
    heads = model.cosine_heads  # how split_state splits the state (all CE's linear heads in stage 2)
    net = speed.prepare(model, cfg)
    step_net = speed.step_model(model, cfg)
    # learned radii, one per class and seed ([C] for one seed, as an unpacked stage 2 keeps them)
    eps = nn.Parameter(torch.full((C,) if k == 1 else (k, C), cfg.eps_init, device=device))
    head = {id(p) for p in model.fc.parameters()}
    backbone = [(name, p) for name, p in model.named_parameters() if id(p) not in head]
    feature_names = [name for name, _ in backbone] + [RADII]  # to split the optimizer states per seed
    classifier_names = parameter_names(model.fc) if k == 1 else [f"fc.{n}" for n in parameter_names(model.fc)]
    opt_features = speed.sgd([p for _, p in backbone] + [eps], cfg.feature_lr, cfg.momentum, cfg.weight_decay,
                             cfg.fused_sgd)
    opt_classifier = speed.sgd(model.fc.parameters(), cfg.classifier_lr, cfg.momentum, cfg.weight_decay,
                               cfg.fused_sgd)
    aug_gens = [augment_generator(device, c.seed) for c in cfgs]
    ce_weights = [_weights(d.class_counts, cfg.ce_weights, device) for d in datas]
    classifier_weights = [_weights(d.class_counts, cfg.classifier_weights, device) for d in datas]
    first_classifier_epoch = cfg.epochs - cfg.classifier_epochs
    loss_fn = speed.compiled(feature_losses, sizes=(cfg.batch_size,)) if cfg.compile_loss else feature_losses
    augment = augmenter(cfg, sizes=(cfg.batch_size * cfg.augment_batches, cfg.eval_batch_size))

    def radii(i: int) -> Tensor:
        return eps if k == 1 else eps[i]

    def train_step(x: Tensor, y: Tensor, centroids: Tensor) -> Tensor:
        # In a CUDA graph the model runs without torch.compile's CUDA graphs, which cannot be recorded inside
        # another, and autocast casts the weights anew in every replay instead of caching the casts.
        with speed.autocast(device, cfg.precision, cache=not cfg.graph_step):
            z, logits = (step_net if cfg.graph_step else net)(x)
            losses = [loss_fn(z[i], logits[i], y[i], centroids[i], radii(i), ce_weights[i], cfg.temperature,
                              cfgs[i].mode, cfg.ce_weight, cfg.robust_weight) for i in range(k)]
        opt_features.zero_grad(set_to_none=True)  # in a recording: the gradients live in the graph's memory
        torch.stack([loss for loss, _, _ in losses]).sum().backward()  # each seed's loss reaches its own weights
        opt_features.step()
        if cfg.eps_nonneg:
            with torch.no_grad():
                eps.clamp_(min=0)
        return torch.stack([torch.stack(seed_losses) for seed_losses in losses]).detach()  # [K, 3]
    # graph_step: full batches of the feature epochs replay the whole step from one CUDA graph (the learning
    # rate is constant; each batch's images, labels and the pass's centroids are copied in).
    step = speed.graphed(train_step, sizes=(cfg.batch_size,) if cfg.graph_step else ())
    start, histories = 0, [[] for _ in cfgs]
    # per seed: best test NCM in the feature phase, best top-1 afterwards
    best_features: list[Optional[dict]] = [None] * k
    best_classifier: list[Optional[dict]] = [None] * k
    if resumes is not None:
        start = resume_epoch(resumes)
        model.load_state_dict(join_states([r["model"] for r in resumes]))
        with torch.no_grad():
            eps.copy_(resumes[0]["eps"] if k == 1 else torch.stack([r["eps"] for r in resumes]))
        speed.load_optimizer_state(opt_features, join_optimizer_states([r["opt_features"] for r in resumes],
                                                                       feature_names, heads))
        speed.load_optimizer_state(opt_classifier, join_optimizer_states([r["opt_classifier"] for r in resumes],
                                                                         classifier_names, heads))
        for sampler, gen, resume in zip(samplers, aug_gens, resumes):
            sampler.load_state_dict(resume["sampler"])
            gen.set_state(resume["aug_gen"])
        # copies: the loop extends them, and one state may be resumed from more than once
        histories = copy.deepcopy([r["history"] for r in resumes])
        best_features = copy.deepcopy([r["best_features"] for r in resumes])
        best_classifier = copy.deepcopy([r["best_classifier"] for r in resumes])

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        feature_phase = epoch < first_classifier_epoch
        reload = [c.mode == "faithful" and best is not None for c, best in zip(cfgs, best_features)]
        if epoch == first_classifier_epoch and any(reload):
            # QUIRK (faithful): the classifier is re-trained on the feature epoch chosen by test NCM accuracy.
            # The reference's checkpoint holds the model alone: the radii stay as the last feature epoch left them.
            # A clean unit packed beside faithful ones goes on from its last feature epoch.
            now = split_state(model.state_dict(), heads) if not all(reload) else [None] * k
            model.load_state_dict(join_states([{key: value.to(device) for key, value in best["model"].items()}
                                               if again else state
                                               for again, best, state in zip(reload, best_features, now)]))
        streams = [sampler.next_pass().to(device) for sampler in samplers]
        if feature_phase:
            centroids = centroid_banks(model, net, datas, streams, cfg, aug_gens, augment)
            streams = [sampler.next_pass().to(device) for sampler in samplers]
            losses = feature_epoch(model, datas, streams, centroids, cfg, step, aug_gens, augment)
            lr = cfg.feature_lr
        else:
            # Every epoch of the reference builds the centroid bank, unused here: its pass and augmentation
            # draws are spent as it spends them, so the classifier trains on the samples and views it would.
            for own_data, stream, gen in zip(datas, streams, aug_gens):
                bank_draws(own_data, stream, cfg, gen)
            streams = [sampler.next_pass().to(device) for sampler in samplers]
            losses = classifier_epoch(model, datas, streams, cfg, opt_classifier, classifier_weights, aug_gens,
                                      augment)
            lr = cfg.classifier_lr
        check_finite([unit_losses["loss"] for unit_losses in losses], 2, epoch, unit_labels)
        train_time = time.perf_counter() - t0

        reports = evaluate_seeds(model, net, datas, cfg)
        epoch_time = time.perf_counter() - t0
        states = split_state(model.state_dict(), heads)
        opt_states = [split_optimizer_state(opt.state_dict(), names, heads) if on_epoch else [None] * k
                      for opt, names in ((opt_features, feature_names), (opt_classifier, classifier_names))]
        for i, (history, report, state) in enumerate(zip(histories, reports, states)):
            record = {"stage": 2, "epoch": epoch, "phase": "feature" if feature_phase else "classifier",
                      "lr": lr, **losses[i], **report, "radii": radii(i).detach().cpu().tolist(),
                      "train_images_per_s": len(streams[i]) * (2 if feature_phase else 1) / train_time,
                      "epoch_time": epoch_time, "packed_seeds": k}
            history.append(record)
            if feature_phase and improved(record, best_features[i], "ncm_top1"):
                best_features[i] = {"record": record, "model": state}
            if not feature_phase and improved(record, best_classifier[i], "top1"):
                best_classifier[i] = {"record": record, "model": state}
            if on_epoch is not None:
                on_epoch(i, record, {"stage": 2, "epoch": epoch + 1, "bank_draws": BANK_DRAWS, "model": state,
                                     "eps": radii(i).detach().clone(), "opt_features": opt_states[0][i],
                                     "opt_classifier": opt_states[1][i], "sampler": samplers[i].state_dict(),
                                     "aug_gen": aug_gens[i].get_state(), "history": history,
                                     "best_features": best_features[i], "best_classifier": best_classifier[i]})

    # "Best on test" is the best top-1 among classifier epochs (the model the reference reports); without
    # classifier epochs it is the feature epoch with the best test NCM accuracy.
    results = []
    for unit_cfg, history, features_best, classifier_best, last_state in zip(
            cfgs, histories, best_features, best_classifier, split_state(model.state_dict(), heads)):
        best = classifier_best or features_best
        results.append(StageResult(history=history, last=history[-1], best=best["record"],
                                   selected="best" if unit_cfg.mode == "faithful" else "last",
                                   best_state=best["model"], last_state=last_state))
    return results


@torch.no_grad()
def centroid_banks(model: nn.Module, net: Callable, datas: Sequence[LongTailData], streams: Sequence[Tensor],
                   cfg: Stage2Config, gens: Sequence[torch.Generator], augment: ApplyDraws = apply_draws) -> Tensor:
    """Returns each seed's [C,64] class centroids ([K,C,64]) of eval-mode features over one augmented pass of
    its training stream (of `datas[i]`), the seeds packed into `net`'s model."""
    model.eval()
    draws = [bank_draws(data, stream, cfg, gen) for data, stream, gen in zip(datas, streams, gens)]

    def images(pos: Tensor) -> Tensor:
        # Chunks of eval_batch_size images take their slice of the pass's draws: the images do not depend on it.
        return join_views([augment(data.train_images[stream[pos]], take_draws(d, pos))
                           for data, stream, d in zip(datas, streams, draws)])

    z, _ = extract_seeds(net, torch.arange(len(streams[0]), device=streams[0].device), cfg.eval_batch_size, images,
                         cfg)
    return torch.stack([class_centroids(seed_z, data.train_labels[stream], data.num_classes)
                        for seed_z, data, stream in zip(z, datas, streams)])


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


def feature_epoch(model: nn.Module, datas: Sequence[LongTailData], streams: Sequence[Tensor], centroids: Tensor,
                  cfg: Stage2Config, step: Callable[[Tensor, Tensor, Tensor], Tensor],
                  gens: Sequence[torch.Generator], augment: ApplyDraws = apply_draws) -> list[dict]:
    """One pass training the backbone and radii with CE_w + robust loss, classifier frozen; returns each seed's
    mean losses.

    `step(x, y, centroids)` makes one optimizer step and returns each seed's (loss, CE, robust) of the batch."""
    model.train()
    model.fc.requires_grad_(False)
    sums = torch.zeros(len(streams), 3, device=streams[0].device)  # loss, ce, robust per seed; read once per epoch
    for x, y in packed_batches(datas, streams, cfg.batch_size, gens, cfg.augment_batches, cfg.autoaugment,
                               cfg.cutout, augment):
        sums += step(speed.model_input(x, cfg.channels_last), y, centroids) * y.shape[1]
    model.fc.requires_grad_(True)
    return [{"loss": loss, "ce_loss": ce, "robust_loss": robust}
            for loss, ce, robust in (sums / len(streams[0])).tolist()]


def classifier_epoch(model: nn.Module, datas: Sequence[LongTailData], streams: Sequence[Tensor], cfg: Stage2Config,
                     optimizer: torch.optim.Optimizer, weights: Sequence[Optional[Tensor]],
                     gens: Sequence[torch.Generator], augment: ApplyDraws = apply_draws) -> list[dict]:
    """One pass re-training only the linear classifier, the whole model in eval mode, seed i's loss weighted by
    `weights[i]`; returns each seed's mean loss."""
    model.eval()
    loss_sums = torch.zeros(len(streams), device=streams[0].device)
    for x, y in packed_batches(datas, streams, cfg.batch_size, gens, cfg.augment_batches, cfg.autoaugment,
                               cfg.cutout, augment):
        x = speed.model_input(x, cfg.channels_last)
        with speed.autocast(x.device, cfg.precision):
            with torch.no_grad():  # the backbone is frozen: no graph through it
                z = model.features(x)
            logits = model.fc(z)
            losses = torch.stack([weighted_cross_entropy(logits[i], y[i], weights[i]) for i in range(len(streams))])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        loss_sums += losses.detach() * y.shape[1]
    return [{"loss": loss / len(streams[0]), "ce_loss": loss / len(streams[0]), "robust_loss": float("nan")}
            for loss in loss_sums.tolist()]
