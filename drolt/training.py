"""What the stage-1 and stage-2 loops share: the result type, batched evaluation, and small state helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from . import speed
from .augment import ApplyDraws, Draws, apply_draws, concat_draws, draw, test_transform, to_unit_float
from .centroids import class_centroids
from .data import LongTailData
from .metrics import classification_report
from .packed import pack
from .sampling import batches
from .seeds import stream_seed

# Called after every epoch with the epoch's record and the loop's full state (enough to resume from).
EpochCallback = Callable[[dict, dict], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the stage and epoch (and `member`, the index
    of the unit that diverged in a pack; None outside a pack)."""

    def __init__(self, message: str, member: Optional[int] = None):
        super().__init__(message)
        self.member = member


@dataclass
class StageResult:
    history: list[dict]       # one record per epoch
    last: dict                # the last epoch's record
    best: dict                # the best-on-test epoch's record (test top-1; a stage 2 without classifier
                              # epochs: test NCM top-1)
    selected: str             # "best" (faithful: selection on test) or "last" (clean): what the mode reports
    best_state: dict          # model weights of the best-on-test epoch
    last_state: dict          # model weights after the last epoch

    @property
    def reported(self) -> dict:
        """Returns the record the mode reports."""
        return self.best if self.selected == "best" else self.last

    @property
    def model_state(self) -> dict:
        """Returns the weights this stage hands on: those of the selected epoch."""
        return self.best_state if self.selected == "best" else self.last_state


def clone_state(module: nn.Module) -> dict:
    """Returns a detached copy of the module's state dict (so later steps cannot change it)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Sets every parameter group's learning rate; returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def augment_generator(device: torch.device, seed: int) -> torch.Generator:
    """Returns the augmentation generator of the unit of `seed`, on `device` so that it draws where the images
    are (its own stream: drolt/seeds.py)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, "augment"))


def check_finite(losses: Sequence[float], stage: int, epoch: int, names: Sequence[str]) -> None:
    """Raises TrainingDiverged when a unit's mean loss of the 0-based `epoch` is not finite (`losses` and
    `names`: one per unit of the pack); the message counts epochs from 1, as the progress lines do."""
    for member, (loss, name) in enumerate(zip(losses, names)):
        if not math.isfinite(loss):
            which = f" ({name}, trained packed with others)" if len(losses) > 1 else ""
            raise TrainingDiverged(f"stage {stage} epoch {epoch + 1}{which}: training loss is {loss}; lower the "
                                   "learning rate or check the data", member if len(losses) > 1 else None)


@torch.no_grad()
def extract(net: Callable[[Tensor], tuple[Tensor, Tensor]], items: Tensor, batch_size: int,
            transform: Callable[[Tensor], Tensor] = lambda x: test_transform(to_unit_float(x)),
            cfg: Any = None) -> tuple[Tensor, Tensor]:
    """Returns (features [n,64], logits [n,C]) of `items` in large batches.

    `items` are uint8 NCHW images, or indices that `transform` turns into the model's input chunk by chunk
    (so a 50,000-sample stream is never gathered at once). The caller puts the model in eval mode; `cfg`
    (a stage config) brings its speed settings.
    """
    channels_last, precision = (cfg.channels_last, cfg.precision) if cfg is not None else (False, "fp32")
    feats, logits = [], []
    for chunk in torch.split(items, batch_size):
        x = speed.model_input(transform(chunk), channels_last)  # outside autocast: the model's precision only
        with speed.autocast(items.device, precision):
            z, out = speed.eval_forward(net, x)
        # copies: with CUDA graphs the next chunk's replay reuses these outputs' memory
        feats.append(z.to(torch.float32, copy=True))
        logits.append(out.to(torch.float32, copy=True))
    return torch.cat(feats), torch.cat(logits)


def extract_seeds(net: Callable[[Tensor], tuple[Tensor, Tensor]], items: Tensor, batch_size: int,
                  transform: Callable[[Tensor], Tensor], cfg: Any) -> tuple[Tensor, Tensor]:
    """`extract` for a packed model (drolt/packed.py), whose outputs have the seeds first: returns (features
    [K, n, 64], logits [K, n, C]); `transform` makes a packed chunk of the model's input."""
    def seeds_last(x: Tensor) -> tuple[Tensor, Tensor]:  # extract concatenates chunks along the first dimension
        z, logits = net(x)
        return z.transpose(0, 1), logits.transpose(0, 1)
    z, logits = extract(seeds_last, items, batch_size, transform, cfg)
    return z.transpose(0, 1), logits.transpose(0, 1)


def join_views(views: Sequence[Tensor]) -> Tensor:
    """Returns each seed's images [B, 3, H, W] as one packed batch [B, K*3, H, W] (seed i's in channels
    [3i, 3i + 3), as `pack` lays them out) in one copy; one seed's are returned as they are."""
    return views[0] if len(views) == 1 else torch.cat(list(views), dim=1)


def unit_data(data: LongTailData | Sequence[LongTailData], k: int) -> list[LongTailData]:
    """Returns the data set of each of a pack's k units: `data` for all of them, or the one given per unit."""
    return [data] * k if isinstance(data, LongTailData) else list(data)


def packed_batches(datas: Sequence[LongTailData], streams: Sequence[Tensor], batch_size: int,
                   gens: Sequence[torch.Generator], chunk_batches: int, autoaugment: bool = False,
                   use_cutout: bool = False, augment: ApplyDraws = apply_draws) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (packed images [B, K*3, H, W], labels [K, B]) of every seed's `augmented_batches`, batch by batch:
    seed i's from `datas[i]` (the same data set for every seed, or in stage 2 one of each unit's rho)."""
    per_seed = [augmented_batches(data, stream, batch_size, gen, chunk_batches, autoaugment, use_cutout, augment)
                for data, stream, gen in zip(datas, streams, gens, strict=True)]
    for batch in zip(*per_seed):
        labels = [y for _, y in batch]
        yield join_views([x for x, _ in batch]), labels[0].unsqueeze(0) if len(labels) == 1 else torch.stack(labels)


def augmenter(cfg: Any, sizes: Collection[int]) -> ApplyDraws:
    """Returns how a stage applies its augmentation draws: `apply_draws`, or with `cfg.graph_augment` its
    sync-free form replayed on a GPU from a CUDA graph, for chunks of one of `sizes` images. Other calls
    (a pass's short last chunk, anything on a CPU) run `apply_draws`: the same images, each AutoAugment slot
    computing one op for the images where it fires instead of all 14 ops for every image."""
    if not cfg.graph_augment:
        return apply_draws
    replay = speed.graphed(lambda x, *draws: apply_draws(x, Draws.from_tensors(draws), sync_free=True), sizes,
                           eager=lambda x, *draws: apply_draws(x, Draws.from_tensors(draws)))

    def augment(x: Tensor, d: Draws) -> Tensor:
        return replay(x, *d.tensors())
    return augment


def augmented_batches(data: LongTailData, stream: Tensor, batch_size: int, gen: torch.Generator,
                      chunk_batches: int, autoaugment: bool = False, use_cutout: bool = False,
                      augment: ApplyDraws = apply_draws) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (normalised augmented images, labels) for consecutive batches of the index `stream`.

    `chunk_batches` batches are augmented in one call, their draws made batch by batch in the order one call
    per batch makes them: the images are the same, and a GPU launches the augmentation kernels (and, unless
    `augment` is sync-free, syncs for AutoAugment's grouping) once per chunk instead of once per batch.
    """
    for chunk in torch.split(stream, batch_size * chunk_batches):
        parts = batches(chunk, batch_size)
        draws = concat_draws([draw(len(p), gen, stream.device, autoaugment, use_cutout,
                                   image_size=data.train_images.shape[2]) for p in parts])
        images = augment(data.train_images[chunk], draws)
        for x, part in zip(torch.split(images, batch_size), parts):
            yield x, data.train_labels[part]


def evaluate(model: nn.Module, net: Callable, data: LongTailData, cfg: Any, ncm: bool = True) -> dict:
    """Returns the test metrics of SPEC §5, NCM using centroids of the un-augmented LT training set (with
    `ncm=False` that pass over the training set is skipped and the NCM fields are NaN)."""
    return evaluate_seeds(model, lambda x: tuple(t.unsqueeze(0) for t in net(x)), [data], cfg, ncm)[0]


def evaluate_seeds(model: nn.Module, net: Callable, datas: Sequence[LongTailData], cfg: Any,
                   ncm: bool = True) -> list[dict]:
    """Returns `evaluate`'s metrics for each of K seeds packed into one model (drolt/packed.py), seed i's on
    `datas[i]`: `net` takes a packed batch and returns (features [K, n, 64], logits [K, n, C])."""
    model.eval()

    def features(images: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Each seed's (features, logits) of its images, in packed passes over the longest set's length."""
        n = [len(x) for x in images]
        shared = all(x is images[0] for x in images)  # one data set: its images transformed once for every seed

        def chunk(pos: Tensor) -> Tensor:
            if shared:
                x = test_transform(to_unit_float(images[0][pos]))
                return pack(x.unsqueeze(0).expand(len(images), *x.shape))
            # A shorter set's rows past its end repeat its last image; eval mode computes every row on its own,
            # and only each set's own rows are kept.
            return join_views([test_transform(to_unit_float(x[pos.clamp(max=len(x) - 1)])) for x in images])
        z, logits = extract_seeds(net, torch.arange(max(n), device=images[0].device), cfg.eval_batch_size, chunk, cfg)
        return [(seed_z[:m], seed_logits[:m]) for seed_z, seed_logits, m in zip(z, logits, n)]

    centroids: list[Optional[Tensor]] = [None] * len(datas)
    if ncm:
        centroids = [class_centroids(z, data.train_labels, data.num_classes)
                     for (z, _), data in zip(features([d.train_images for d in datas]), datas)]
    tested = features([d.test_images for d in datas])
    return [classification_report(logits, z, data.test_labels, c, data.class_counts)
            for (z, logits), c, data in zip(tested, centroids, datas)]


def improved(record: dict, best: Optional[dict], key: str) -> bool:
    """True when `record[key]` beats the best so far (ties keep the earlier epoch, as the reference does)."""
    return best is None or record[key] > best["record"][key]
