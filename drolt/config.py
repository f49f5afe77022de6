"""Settings of one unit: the data, stage 1 and stage 2, with the reference's values as defaults.

Every hyper-parameter lives here once. `from_dict` rejects unknown keys and wrong types with a message that
names the key, so a typo in a YAML file or a flag stops the run before any work.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import yaml

from .speed import COMPILE_MODES, PRECISIONS

DATASETS = ("cifar10", "cifar100")
# Where the data is read from, not what is computed: kept out of unit ids and of comparisons between runs.
DATA_LOCATION = ("root", "download")
PROFILES = ("exp", "step")
MODES = ("faithful", "clean")
STAGE1_METHODS = ("ce", "ldam_drw")
CLASS_WEIGHTS = ("none", "lt", "bal")


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    rho: float = 100.0            # imbalance ratio n_max / n_min (the paper's 100, 50, 10)
    profile: str = "exp"
    subset_seed: int = 0          # which images form the long-tailed subset (reference: 0)
    root: str = "data"            # folder holding cifar-10-batches-py/ or cifar-100-python/
    download: bool = False
    synthetic: int = 0            # >0: generate a stand-in dataset with this many train images per class
                                  # in the real file layout under root (smoke runs, tests); 0: real CIFAR

    def validate(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("profile", self.profile, PROFILES)
        if not self.rho >= 1:
            raise ValueError(f"rho must be >= 1 (the imbalance ratio n_max/n_min, e.g. 100), got {self.rho}")
        _seeds(self, "subset_seed")
        if self.synthetic < 0:
            raise ValueError(f"synthetic must be >= 0 (train images per class; 0 = real data), got {self.synthetic}")


@dataclass
class SpeedSettings:
    """How a stage computes, not what: each setting is tested to give what the plain path gives (on a CPU;
    CUDA graphs and bf16 tensor cores are checked on a GPU by benchmarks/same_numbers.py and
    benchmarks/graph_augment_check.py)."""
    eval_batch_size: int = 1000   # images per chunk when evaluating or building centroid banks: one forward
                                  # pass on a GPU, passes of 128 on a CPU (drolt.speed.eval_forward)
    channels_last: bool = False   # channels-last memory format (drolt/speed.py)
    precision: str = "fp32"       # "fp32" or "bf16" (autocast; on CUDA)
    compile: bool = False         # torch.compile the model's forward
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" replays CUDA graphs on a GPU
    augment_batches: int = 8      # training batches augmented in one call: the same images as one call per
                                  # batch (draws are made batch by batch), fewer kernel launches on a GPU
    graph_augment: bool = False   # on a GPU, augmentation chunks replayed from CUDA graphs (a sync-free form:
                                  # every AutoAugment op on every image, each keeping its own; the same
                                  # images); no effect on a CPU
    graph_step: bool = False      # on a GPU, the whole training step of a full batch (forward, loss, backward,
                                  # SGD; stage 2: its feature epochs) replayed from one CUDA graph; `compile`
                                  # then speeds the evaluation only (see compile_step). No effect on a CPU
    compile_step: bool = False    # with graph_step: the recorded step runs the model compiled by torch.compile
                                  # without CUDA graphs of its own (inductor's fused kernels) instead of eager;
                                  # on a CPU the training step then runs compiled, as with `compile`
    fused_sgd: bool = False       # SGD's update as one fused kernel per step instead of several multi-tensor
                                  # ops: the same formula, less host time per step (which bounds stage 1 on
                                  # an H100: results/benchmarks/h100_profile_stage1_fast.txt)

    def validate_speed(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _positive(self, "eval_batch_size", "augment_batches")
        if self.compile_step and not self.graph_step:
            raise ValueError("compile_step compiles the model for graph_step's recorded training step, and "
                             "graph_step is off: set graph_step: true as well, or use compile: true to compile "
                             "the model without recording the step")


@dataclass
class Stage1Config(SpeedSettings):
    method: str = "ce"            # "ce" (plain cross-entropy) or "ldam_drw" (the LDAM-DRW baseline)
    mode: str = "faithful"        # faithful: hand the best-on-test epoch to stage 2; clean: the last epoch
    seed: int = 0                 # training seed: init, sample order, augmentation
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_epochs: int = 5        # linear warm-up over the first epochs
    lr_decay_epochs: list[int] = field(default_factory=lambda: [160, 180])  # LR x0.01 after each
    drw_start_epoch: int = 160    # LDAM-DRW: class re-weighting from this epoch on
    ncm_every: int = 1            # NCM accuracy in every this many epochs' records, and always in the last
                                  # and the best-on-test epoch's; its pass over the training set is about a
                                  # fifth of an epoch's compute, which the reference does not spend in stage 1

    def validate(self) -> None:
        _choice("method", self.method, STAGE1_METHODS)
        self.validate_speed()
        _choice("mode", self.mode, MODES)
        _positive(self, "epochs", "batch_size", "lr", "ncm_every")
        _seeds(self, "seed")
        if self.method == "ldam_drw" and self.drw_start_epoch >= self.epochs:
            raise ValueError(f"drw_start_epoch ({self.drw_start_epoch}) must be below epochs ({self.epochs}) for "
                             "ldam_drw: its re-weighting would never start, and the run would not be LDAM-DRW; "
                             "lower stage1.drw_start_epoch (the reference: 160 of 200)")
        _non_negative(self, "momentum", "weight_decay", "warmup_epochs", "drw_start_epoch")
        if any(e < 1 for e in self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs must be epochs >= 1 (the LR drops x0.01 after each); got "
                             f"{self.lr_decay_epochs}")

    def warnings(self) -> list[str]:
        """Returns what the schedule does that a shortened run may not expect (legal, so not an error)."""
        found = []
        late = [e for e in self.lr_decay_epochs if e >= self.epochs]
        if late:
            found.append(f"stage1.lr_decay_epochs {late} fall at or after the last of {self.epochs} epochs: the "
                         "learning rate does not decay there (set stage1.lr_decay_epochs for a shortened schedule)")
        if self.warmup_epochs > self.epochs:
            found.append(f"stage1.warmup_epochs {self.warmup_epochs} outlasts the {self.epochs} epochs: the learning "
                         f"rate never reaches stage1.lr {self.lr:g} (it ends at "
                         f"{self.lr * self.epochs / self.warmup_epochs:g}; set stage1.warmup_epochs for a shortened "
                         "schedule)")
        return found


@dataclass
class Stage2Config(SpeedSettings):
    mode: str = "faithful"        # faithful: reference quirks incl. selection on test; clean: none of them
    seed: int = 0
    epochs: int = 100             # total, the classifier epochs included
    classifier_epochs: int = 20   # the last epochs re-train only the linear classifier
    batch_size: int = 128
    feature_lr: float = 0.005
    classifier_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 1.0
    sampler: str = "resample,4"   # class-aware: blocks of 4 images of one class
    ce_weights: str = "lt"        # feature phase CE class weights: n_c / max n ("lt"), "bal" or "none"
    classifier_weights: str = "none"  # classifier phase CE weights
    ce_weight: float = 1.0        # loss = ce_weight * CE + robust_weight * robust
    robust_weight: float = 1.0
    eps_init: float = 1.0         # learned radii start here (the reference ignores its --margin flag)
    eps_nonneg: bool = False      # clean-mode option: clamp radii at 0 (a deviation from the paper)
    autoaugment: bool = True
    cutout: bool = True
    compile_loss: bool = False    # speed: torch.compile the feature phase's losses (about 250 ops a step
                                  # dispatched one by one otherwise; benchmarks/op_counts.py)

    def validate(self) -> None:
        _choice("mode", self.mode, MODES)
        self.validate_speed()
        _choice("ce_weights", self.ce_weights, CLASS_WEIGHTS)
        _choice("classifier_weights", self.classifier_weights, CLASS_WEIGHTS)
        _positive(self, "epochs", "batch_size", "feature_lr", "classifier_lr", "temperature")
        _seeds(self, "seed")
        _non_negative(self, "classifier_epochs", "momentum", "weight_decay", "ce_weight", "robust_weight")
        if self.classifier_epochs > self.epochs:
            raise ValueError(f"classifier_epochs ({self.classifier_epochs}) cannot exceed epochs ({self.epochs})")
        if self.eps_nonneg and self.mode == "faithful":
            raise ValueError("eps_nonneg is a clean-mode deviation; set mode: clean or eps_nonneg: false")
        from .sampling import parse_sampler
        parse_sampler(self.sampler)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: keys written beside it override the merged ones, as meant
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice in one mapping (the second would silently win)",
                        key_node.start_mark)
                seen.add(key)
            except TypeError:
                pass  # an unhashable key: PyYAML's own constructor says so below
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> Any:
    """Returns the YAML document in a settings file; invalid YAML or a key given twice raises ValueError
    naming the file and the line."""
    try:
        # a stream, so that the error's position names the file; UTF-8 as YAML is, whatever the locale
        with path.open(encoding="utf-8") as stream:
            return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML: {err}") from None


def from_dict(cls: type, values: dict[str, Any] | None, where: str = "") -> Any:
    """Returns a validated `cls` built from `values`; unknown keys and wrong types raise ValueError."""
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{where or cls.__name__} must be a mapping of settings (key: value), got {values!r}")
    values = dict(values or {})
    hints = get_type_hints(cls)
    check_keys(cls, values, where)
    for key, value in values.items():
        values[key] = _coerce(key, value, hints[key], where)
    config = cls(**values)
    try:
        config.validate()
    except ValueError as err:  # the checks name the setting; where it was written is known only here
        raise ValueError(f"{where}: {err}" if where else str(err)) from None
    return config


def check_keys(cls: type, values: dict, where: str = "") -> None:
    """Raises ValueError naming the keys of `values` that are no setting of `cls`, each with the closest
    setting's name when one is close (a typo), and the allowed names."""
    check_names([f.name for f in dataclasses.fields(cls)], values, where)


def check_names(names: Sequence[str], values: dict, where: str = "", what: str = "setting") -> None:
    """`check_keys` for the names given: raises ValueError naming the keys of `values` not among them."""
    unknown = sorted(set(values) - set(names), key=str)  # YAML keys may be numbers, booleans or null
    if unknown:
        guesses = [f"{key!r}" + "".join(f" (did you mean {close!r}?)" for close in
                                        difflib.get_close_matches(str(key), names, n=1)) for key in unknown]
        raise ValueError(f"unknown {what}(s) {', '.join(guesses)}{_at(where)}; allowed: {', '.join(names)}")


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 2e-4 (no dot before the exponent) as a string; accept what float() accepts.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}
    if hint in ok:
        if not ok[hint]:
            raise ValueError(f"setting {key!r}{_at(where)} must be {hint.__name__}, got {value!r}")
        return float(value) if hint is float else value
    if getattr(hint, "__origin__", None) is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"setting {key!r}{_at(where)} must be a list of integers, got {value!r}")
        return list(value)
    raise TypeError(f"no coercion for {key!r} of type {hint}")


def _at(where: str) -> str:
    return f" in {where}" if where else ""


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _seeds(config: Any, *keys: str) -> None:
    for key in keys:
        if not 0 <= getattr(config, key) < 2**32:
            raise ValueError(f"{key} must be between 0 and {2**32 - 1} (what torch's generators take), "
                             f"got {getattr(config, key)!r}")


def _positive(config: Any, *keys: str) -> None:
    for key in keys:
        if not getattr(config, key) > 0:
            raise ValueError(f"{key} must be > 0, got {getattr(config, key)!r}")


def _non_negative(config: Any, *keys: str) -> None:
    for key in keys:
        if not getattr(config, key) >= 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(config, key)!r}")
