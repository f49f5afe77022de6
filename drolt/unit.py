"""One unit of work run in-process: load the data, run stage 1 and/or stage 2, keep everything in a folder.

Folder layout (`out/`):
  unit.yaml                 the resolved settings
  stage1/, stage2/          per stage: state.pt (resume point, rewritten every epoch), metrics.jsonl
                            (one record per epoch), model_best.pt and model_last.pt (weights of the best-on-test
                            and of the last epoch), result.json and done
A stage whose `done` marker exists is not run again; one with a state.pt resumes after its last epoch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import shutil
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml

from .checkpoint import (atomic_write, discard_partial_writes, folder_lock, load_state, read_json, require_folder,
                         save_state, save_state_keeping_previous, write_json, write_jsonl)
from .config import DATA_LOCATION, DataConfig, Stage1Config, Stage2Config, check_names, from_dict
from .data import LongTailData, UnofficialDataWarning, load_long_tail, write_synthetic_cifar
from .model import resnet32
from .packed import PER_UNIT, PER_UNIT_DATA, unit_names
from .provenance import provenance
from .stage1 import train_stage1, train_stage1_seeds
from .stage2 import BANK_DRAWS, train_stage2, train_stage2_seeds
from .training import StageResult, TrainingDiverged, unit_data

METHODS = ("ce", "ldam_drw", "dro_lt")


@dataclass
class UnitConfig:
    method: str = "dro_lt"        # ce / ldam_drw: stage 1 only; dro_lt: CE stage 1 then DRO-LT stage 2
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def stages(self) -> tuple[int, ...]:
        """Returns the stages this method runs."""
        return (1, 2) if self.method == "dro_lt" else (1,)

    def as_dict(self) -> dict:
        """Returns the settings as plain data (stage 2 only where the method has it)."""
        out = {"method": self.method, "data": dataclasses.asdict(self.data),
               "stage1": dataclasses.asdict(self.stage1)}
        if 2 in self.stages():
            out["stage2"] = dataclasses.asdict(self.stage2)
        return out


def unit_from_dict(values: dict, where: str = "unit", taken: Sequence[str] = ()) -> UnitConfig:
    """Returns a validated UnitConfig from nested plain data; names the bad key on error (`taken`: the keys the
    caller read from the same place before, named among the allowed ones)."""
    values = dict(values)
    check_names(["method", "data", "stage1", "stage2", *taken], values, where, what="key")
    method = values.get("method", "dro_lt")
    if method not in METHODS:
        raise ValueError(f"method in {where} must be one of {', '.join(METHODS)}; got {method!r}")
    for section in ("data", "stage1", "stage2"):
        if not isinstance(values.get(section) or {}, dict):
            raise ValueError(f"{section} in {where} must be a mapping of settings (key: value, as in "
                             f"stage1: {{epochs: 3}}); got {values[section]!r}")
    stage1 = dict(values.get("stage1") or {})
    stage1.setdefault("method", "ldam_drw" if method == "ldam_drw" else "ce")
    if (stage1["method"] == "ldam_drw") != (method == "ldam_drw"):
        raise ValueError(f"stage1.method {stage1['method']!r} does not fit method {method!r} in {where}")
    return UnitConfig(method=method,
                      data=from_dict(DataConfig, values.get("data"), f"data of {where}"),
                      stage1=from_dict(Stage1Config, stage1, f"stage1 of {where}"),
                      stage2=from_dict(Stage2Config, values.get("stage2"), f"stage2 of {where}"))


def resolve_device(name: str = "auto") -> torch.device:
    """Returns the torch device for "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def load_data(cfg: DataConfig) -> LongTailData:
    """Returns the long-tailed dataset, writing a synthetic stand-in first when `cfg.synthetic` asks for one."""
    root = Path(cfg.root).expanduser().resolve()
    if not cfg.synthetic:
        return load_long_tail(cfg.dataset, root, cfg.rho, cfg.profile, cfg.subset_seed, cfg.download)
    folder = root / f"synthetic-{cfg.dataset}-{cfg.synthetic}"
    if not (folder / "done").exists():
        # Written beside and renamed into place, so a concurrent reader never sees half-written files.
        tmp = root / f".{folder.name}.{os.getpid()}.tmp"
        write_synthetic_cifar(tmp, cfg.dataset, train_per_class=cfg.synthetic,
                              test_per_class=max(10, cfg.synthetic // 10), seed=0)
        (tmp / "done").touch()
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: its copy is identical
            shutil.rmtree(tmp)
    with warnings.catch_warnings():
        # Generated files never match the official md5 sums; the source field says what they are instead.
        warnings.simplefilter("ignore", UnofficialDataWarning)
        data = load_long_tail(cfg.dataset, folder, cfg.rho, cfg.profile, cfg.subset_seed, download=False)
    return dataclasses.replace(data, source="synthetic")


Log = Callable[[str], None]


def format_record(record: dict, epochs: int) -> str:
    """Returns the one-line progress summary of an epoch record."""
    def pct(x: float) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"
    phase = f" {record['phase']}" if "phase" in record else ""
    loss = record.get("train_loss", record.get("loss"))
    return (f"stage {record['stage']}{phase} epoch {record['epoch'] + 1}/{epochs}  lr {record['lr']:.2g}  "
            f"loss {loss:.4f}  top1 {pct(record['top1'])}  ncm {pct(record['ncm_top1'])}  "
            f"many/med/few {pct(record['many'])}/{pct(record['medium'])}/{pct(record['few'])}  "
            f"{record['epoch_time']:.1f}s")


def run_stage(stage: int, unit: UnitConfig, data: LongTailData, device: torch.device, folder: Path,
              log: Log, stage1_weights: Optional[dict] = None,
              report: Optional[Callable[[dict], None]] = None) -> dict:
    """Runs (or resumes, or skips when done) one stage in `folder`; returns its result.json contents.

    `report` is called with each epoch's record once the epoch's state is safely on disk.
    """
    done, resume = _open_stage(stage, folder, log)
    if done is not None:
        return done
    cfg = unit.stage1 if stage == 1 else unit.stage2
    t0 = time.time()
    on_epoch = _epoch_saver(folder, cfg.epochs, log, report)
    if stage == 1:
        result = train_stage1(cfg, data, device, on_epoch, resume)
    else:
        result = train_stage2(cfg, data, stage1_weights, device, on_epoch, resume)
    return _finish_stage(stage, folder, result, cfg, data, device, t0)


def run_pack(stage: int, units: Sequence[UnitConfig], folders: Sequence[Path],
             data: LongTailData | Sequence[LongTailData], device: torch.device, log: Log,
             report: Optional[Callable[[int, dict], None]] = None,
             stage1_weights: Optional[Sequence[dict]] = None) -> list[Optional[dict]]:
    """Runs one stage of units that differ only in their seed (stage 1: and method; stage 2: and mode, rho, and
    the stage 1 each starts from, `stage1_weights`), packed into one model (`train_stage1_seeds`,
    `train_stage2_seeds`), each into its own folder exactly as `run_stage` would; returns their result.json
    contents in order, None for a unit whose training diverged (its error.json says so; the others go on
    without it). `data` is the units' data set, or one per unit.

    Done units are skipped, and so are units that diverged in an earlier attempt of this run (`diverged`:
    they would only diverge again; `drolt run` clears error.json before a run, and a trial Ray retries clears
    every other error its earlier attempts wrote). The others resume from their folders: seeds behind train
    packed until they reach the next ones' epoch, then on together. `report(i, record)` is called with unit
    i's records as `run_stage`'s `report` is.
    """
    own = PER_UNIT_DATA[stage]
    if any(dataclasses.replace(unit.data, **{key: getattr(units[0].data, key) for key in own}) != units[0].data
           for unit in units):
        differ = f" but {', '.join(own)}" if own else ""
        raise ValueError(f"units trained packed in stage {stage} must share their data settings{differ}; train them "
                         "apart")
    datas = unit_data(data, len(units))
    cfgs = [unit.stage1 if stage == 1 else unit.stage2 for unit in units]
    names = unit_names(cfgs, PER_UNIT[stage], [unit.data for unit in units])
    results: list[Optional[dict]] = [None] * len(units)
    waiting: dict[int, Optional[dict]] = {}  # unit index -> the state it resumes from
    for i, folder in enumerate(folders):
        if diverged(folder):
            continue
        results[i], resume = _open_stage(stage, folder, log)
        if results[i] is None:
            waiting[i] = resume
    while waiting:
        epochs = {i: state["epoch"] if state else 0 for i, state in waiting.items()}
        after = min(epochs.values())
        pack = [i for i in waiting if epochs[i] == after]
        catch_up = min((e for e in epochs.values() if e > after), default=None)
        savers = [_epoch_saver(folders[i], cfgs[i].epochs, _tagged(log, names[i], len(pack)), None)
                  for i in pack]
        reports: list[tuple[int, dict]] = []

        def on_epoch(j: int, record: dict, state: dict) -> None:
            savers[j](record, state)
            reports.append((pack[j], record))
            if j < len(pack) - 1:
                return
            # Reported once every seed's epoch is on disk: Ray may stop a trial at a report (Ctrl-C), and seeds
            # stopped at different epochs would resume in smaller packs.
            for i, seed_record in reports if report is not None else ():
                report(i, seed_record)
            reports.clear()
            if record["epoch"] + 1 == catch_up:
                raise _CaughtUp
        if len(waiting) > 1:
            how = (f"{', '.join(names[i] for i in pack)} train packed into one model" if len(pack) > 1
                   else f"{names[pack[0]]} trains alone")
            until = f" until {catch_up}, where the others are" if catch_up else ""
            log(f"stage {stage}: {how} after epoch {after}{until}")
        t0 = time.time()
        try:
            resumes = None if after == 0 else [waiting[i] for i in pack]
            if stage == 1:
                trained = train_stage1_seeds([cfgs[i] for i in pack], datas[0], device, on_epoch, resumes)
            else:
                trained = train_stage2_seeds([cfgs[i] for i in pack], [datas[i] for i in pack],
                                             [stage1_weights[i] for i in pack], device, on_epoch, resumes)
        except _CaughtUp:
            trained = []
        except TrainingDiverged as err:
            # The others' last epochs are on disk: they resume without the unit that diverged.
            failed = pack[err.member or 0]
            record_failure(folders[failed], err, epochs_done(folders[failed]))
            others = "; the others go on without it" if len(waiting) > 1 else ""
            log(f"stage {stage} {names[failed]} failed: {err}{others}")
            del waiting[failed]
            trained = []
        for i, result in zip(pack, trained):
            results[i] = _finish_stage(stage, folders[i], result, cfgs[i], datas[i], device, t0)
            del waiting[i]
        for i in waiting:
            waiting[i] = load_resume_state(folders[i], log)
    return results


class _CaughtUp(Exception):
    """Raised from a pack's epoch callback when its seeds reach the epoch of seeds further on."""


def diverged(folder: Path) -> bool:
    """True when the unit's last failure was a diverged training loss (its error.json says so)."""
    try:
        return read_json(folder / "error.json").get("type") == TrainingDiverged.__name__
    except (OSError, ValueError, AttributeError):
        return False


def _tagged(log: Log, name: str, k: int) -> Log:
    """Returns `log` with each line naming the unit, where lines of several packed units interleave."""
    return log if k == 1 else (lambda line: log(f"[{name}] {line}"))


def _open_stage(stage: int, folder: Path, log: Log) -> tuple[Optional[dict], Optional[dict]]:
    """Returns (result.json contents, None) when the stage in `folder` is complete, else (None, the state it
    resumes from or None), having cleared what an interrupted run left half-written."""
    done = read_result(folder)
    if done is not None and weights_loadable(folder):
        log(f"stage {stage}: already complete in {folder}")
        return done, None
    damaged = (folder / "done").exists()
    if damaged:
        (folder / "done").unlink()
    discard_partial_writes(folder)  # callers hold the unit's folder_lock: no other process writes here
    resume = load_resume_state(folder, log)
    if damaged:
        log(f"warning: stage {stage} in {folder} is marked complete but its result or weights are damaged; "
            + ("rebuilding them from its last state" if resume is not None
               else "no state to rebuild them from is left, so it trains again from the start"))
    if resume is not None:
        log(f"stage {stage}: resuming after epoch {resume['epoch']} from {folder}")
        if stage == 2 and resume.get("bank_draws") != BANK_DRAWS:
            log("warning: an earlier drolt started this stage 2, its centroid banks drawing views per "
                "eval_batch_size chunk; it goes on drawing them per pass, so its epochs mix the two (delete "
                f"{folder} to train it anew)")
    return None, resume


def _epoch_saver(folder: Path, epochs: int, log: Log, report: Optional[Callable[[dict], None]]
                 ) -> Callable[[dict, dict], None]:
    """Returns the `on_epoch` that keeps a stage's state and records in `folder` after every epoch."""
    def on_epoch(record: dict, state: dict) -> None:
        save_state_keeping_previous(state, folder / "state.pt")
        write_jsonl(folder / "metrics.jsonl", state["history"])
        log(format_record(record, epochs))
        if report is not None:
            report(record)
    return on_epoch


def _finish_stage(stage: int, folder: Path, result: StageResult, cfg: Stage1Config | Stage2Config,
                  data: LongTailData, device: torch.device, started: float) -> dict:
    """Writes a trained stage's records, weights and result.json, marks it done; returns the result."""
    write_jsonl(folder / "metrics.jsonl", result.history)  # with what the stage filled in at its end
    save_state(result.best_state, folder / "model_best.pt")
    save_state(result.last_state, folder / "model_last.pt")
    summary = {"stage": stage, "selected": result.selected, "reported": result.reported, "last": result.last,
               "best": result.best, "config": dataclasses.asdict(cfg),
               # Summed over epochs, so a resumed stage still reports its whole training time.
               "wall_time_s": sum(r["epoch_time"] for r in result.history),
               "started_at": started, "finished_at": time.time(),
               # A packed epoch's time is the pack's: the unit's own share divides it among the seeds.
               "own_time_s": sum(r["epoch_time"] / r.get("packed_seeds", 1) for r in result.history),
               "packed_seeds": result.history[-1].get("packed_seeds", 1),  # in its last epoch
               "provenance": provenance(device, data.source, cfg.precision)}
    write_json(folder / "result.json", summary)
    (folder / "done").touch()
    return summary


def read_result(folder: Path) -> Optional[dict]:
    """Returns a stage's result.json if the stage is complete and the file readable, else None."""
    if not (folder / "done").exists():
        return None
    try:
        result = read_json(folder / "result.json")
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and {"last", "best"} <= result.keys() else None


def weights_loadable(folder: Path) -> bool:
    """True when a finished stage's weights (model_best.pt, model_last.pt) load: a later stage needs them."""
    try:
        for path in (folder / "model_best.pt", folder / "model_last.pt"):
            load_state(path)
    except Exception:  # a truncated or garbled file, whatever torch.load raises for it
        return False
    return True


def load_resume_state(folder: Path, log: Log) -> Optional[dict]:
    """Returns the stage's last good state: state.pt, else the one before it (state.pt.prev), else None.

    A damaged file is reported and skipped; without any good state the stage starts again from epoch 0.
    """
    for path in (folder / "state.pt", folder / "state.pt.prev"):
        if not path.exists():
            continue
        try:
            state = load_state(path)
            if isinstance(state, dict) and {"epoch", "history", "model"} <= state.keys():
                return state
            problem = "it lacks the epoch, history or model"
        except Exception as err:  # torch.load raises several types for truncated or garbled files
            problem = f"{type(err).__name__}: {err}"
        log(f"warning: {path} is damaged ({problem}); falling back to an earlier state")
    return None


def epochs_done(folder: Path) -> int:
    """Returns how many epochs the unit's metrics.jsonl records."""
    try:
        return sum(1 for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        return 0


def record_failure(folder: Path, err: BaseException, epoch: Optional[int] = None) -> None:
    """Writes error.json: the exception, the epoch reached and the traceback."""
    write_json(folder / "error.json", {"type": type(err).__name__, "message": str(err), "epochs_done": epoch,
                                       "traceback": traceback.format_exception(err)})


def recorded_failure(folder: Path) -> Optional[str]:
    """Returns the failure error.json records in one line ("OSError: ..."), None where there is none or it is
    unreadable. A message of several lines (Ray's word for a process that died) gives its first: status
    tables and progress lines show one line per unit."""
    try:
        error = read_json(folder / "error.json")
        lines = [line for line in str(error["message"]).splitlines() if line.strip()] or [""]
        more = " (more in error.json)" if len(lines) > 1 else ""
        return f"{error['type']}: {lines[0].strip()}{more}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage1_handoff(folder: Path, cfg: Stage2Config) -> Path:
    """Returns the stage-1 weights stage 2 starts from: best-on-test (faithful) or last epoch (clean). Stage
    2's mode decides it, whatever stage 1's: a clean stage 2 must not start from weights chosen on the test set."""
    return folder / ("model_best.pt" if cfg.mode == "faithful" else "model_last.pt")


def run_unit(unit: UnitConfig, out: str | Path, device: torch.device, log: Log = print,
             stage1_weights: Optional[str | Path] = None) -> dict[int, dict]:
    """Runs every stage of `unit` into `out` (resuming what exists); returns {stage: result}.

    `stage1_weights` (a model_*.pt of an earlier stage 1) skips stage 1 and starts stage 2 from it.
    """
    if stage1_weights and 2 not in unit.stages():
        raise ValueError(f"stage-1 weights start stage 2, which method {unit.method!r} does not have (it trains "
                         "stage 1 alone); drop --stage1-weights, or use --method dro_lt")
    out = Path(out).expanduser().resolve()
    require_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, holder="another drolt train", what="drolt train"):
        return _run_stages(unit, out, device, log, stage1_weights)


def _run_stages(unit: UnitConfig, out: Path, device: torch.device, log: Log,
                stage1_weights: Optional[str | Path]) -> dict[int, dict]:
    settings = unit.as_dict()
    if stage1_weights:
        path = Path(stage1_weights).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"stage-1 weights {stage1_weights} do not exist; {_WEIGHTS_FIX}")
        # Given weights replace stage 1's settings, which would say how a stage 1 that never ran here trains;
        # which weights they are is part of the work (their hash), where the file lies is not.
        settings["stage1"] = {"weights": str(path), "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        _check_weights_data(path, unit.data, log)
    _check_same_unit(out, settings)
    for line in unit.stage1.warnings():
        log(f"warning: {line}")
    # atomic: a kill during the write must not leave a folder that no longer says what it holds
    atomic_write(out / "unit.yaml", lambda f: f.write(yaml.safe_dump(settings, sort_keys=False)), mode="w")
    data = load_data(unit.data).to(device)
    log(f"data: {unit.data.dataset}-LT rho {unit.data.rho:g} ({unit.data.profile}), {len(data.train_labels)} "
        f"training images, per class {data.class_counts}, source: {data.source}")
    results: dict[int, dict] = {}
    weights = load_stage1_weights(Path(stage1_weights), data.num_classes) if stage1_weights else None
    for stage in unit.stages():
        if stage == 1 and weights is not None:
            continue
        if stage == 2 and weights is None:
            weights = load_state(stage1_handoff(out / "stage1", unit.stage2))
        results[stage] = run_stage(stage, unit, data, device, out / f"stage{stage}", log, weights)
    return results


# where the data and given weights are read from (their contents are the work: data settings, weights' hash)
_NOT_THE_WORK = {*(f"data.{key}" for key in DATA_LOCATION), "stage1.weights"}


_WEIGHTS_FIX = "pass stage1/model_best.pt or stage1/model_last.pt of a finished CE stage 1 on this dataset"


def load_stage1_weights(path: Path, num_classes: int) -> dict:
    """Returns the stage-1 weights in `path` that stage 2 can start from; raises ValueError naming what the
    file is instead and which file to pass."""
    try:
        weights = load_state(path)
    except Exception as err:  # whatever torch.load raises for a file it did not write
        raise ValueError(f"{path} is not a checkpoint drolt wrote ({type(err).__name__}); {_WEIGHTS_FIX}") from None
    if isinstance(weights, dict) and "model" in weights and "epoch" in weights:
        raise ValueError(f"{path} is a stage's resume state, not its weights; {_WEIGHTS_FIX}")
    try:
        resnet32(num_classes).load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} does not hold the weights of a ResNet-32 with a linear head for {num_classes} "
                         f"classes ({first}); {_WEIGHTS_FIX} (LDAM-DRW's cosine head cannot start DRO-LT)") from None
    return weights


def _read_settings(path: Path) -> Optional[dict]:
    """Returns the settings a unit.yaml holds, or None when it is missing, unreadable or no mapping."""
    try:
        stored = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return stored if isinstance(stored, dict) else None


def _check_weights_data(path: Path, data: DataConfig, log: Log) -> None:
    """Raises ValueError when the unit.yaml beside stage-1 weights (drolt train's folder above stage1/, or a
    grid unit's own folder) says they trained on other data than stage 2 is to train on: a stage 2 at rho 100
    from a rho-10 stage 1 would run to the end and report a unit that is neither. Without one, says so."""
    stored = next((folder / "unit.yaml" for folder in (path.parent, path.parent.parent)
                   if (folder / "unit.yaml").is_file()), None)
    trained = (_read_settings(stored) or {}).get("data") if stored else None
    if not isinstance(trained, dict):
        log(f"warning: no readable unit.yaml beside {path}, so nothing says the weights trained on the data "
            f"stage 2 trains on ({data.dataset} rho {data.rho:g}); check that they did")
        return
    asked = {key: value for key, value in dataclasses.asdict(data).items() if key not in DATA_LOCATION}
    differ = [key for key, value in asked.items() if key in trained and trained[key] != value]
    if differ:
        shown = ", ".join(f"{key} {trained[key]!r} there, {asked[key]!r} here" for key in differ)
        raise ValueError(f"the stage-1 weights {path} trained on other data than stage 2 is to train on ({shown}; "
                         f"{stored}); give the data settings they trained with (--dataset, --rho, --synthetic, "
                         "--set data.KEY=VALUE) or weights trained on this data")


def _check_same_unit(out: Path, settings: dict) -> None:
    """Raises ValueError when `out` holds a unit with other settings: resuming or reusing its stages would
    hand back results, or continue a training, that the settings asked for now did not make."""
    if not any(out.glob("stage*/*")):
        return  # nothing trained here yet (an epoch writes its state before its record: either is work)
    stored = _read_settings(out / "unit.yaml")
    if stored is None:
        raise ValueError(f"{out} holds a training whose settings are missing or unreadable ({out / 'unit.yaml'}): "
                         f"nothing says whether they are the ones asked for now; give --out a new folder, or "
                         f"delete {out} to start over")
    if "stage1_weights_sha256" in stored:  # how drolt wrote given weights before they replaced stage1's settings
        stored["stage1"] = {"weights_sha256": stored.pop("stage1_weights_sha256")}
    old, new = _flat(stored), _flat(settings)
    given = "stage1.weights_sha256"
    # a stage 1 trained here and one given as weights have no settings in common: their change is said once
    skip = {k for k in old.keys() | new.keys() if k.startswith("stage1.")} if (given in old) != (given in new) else ()
    # Keys the stored file lacks came with a later version of drolt: its run used their defaults.
    changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k] and k not in _NOT_THE_WORK)
    changed += sorted(k for k in old.keys() - new.keys() if k not in skip)  # a stage the unit had and has no more
    if skip and not changed:
        if given in new:
            trained = "stage 1 and stage 2 were" if any(out.glob("stage2/*")) else "stage 1 was"
            raise ValueError(f"{out} holds a unit whose {trained} trained here without --stage1-weights: stage 2 "
                             "starts from this folder's stage 1; drop --stage1-weights to go on with it, or give "
                             "--out a new folder to start stage 2 from the weights given")
        where = old.get("stage1.weights", "(its path not recorded)")
        raise ValueError(f"{out} holds a stage 2 started from --stage1-weights {where} "
                         "(unit.yaml has the file's hash): pass the same weights to go on with it, or give --out a "
                         "new folder to train stage 1 there")
    changed += [given] if skip else []
    changed += ["stage1.weights"] if given in changed and "stage1.weights" in old.keys() & new.keys() else []
    if changed:
        shown = ", ".join(f"{k}: {old.get(k, '-')!r} -> {new.get(k, '-')!r}" for k in changed[:6])
        raise ValueError(f"{out} holds a unit trained with other settings ({shown}"
                         f"{', ...' if len(changed) > 6 else ''}); give --out a new folder, or delete {out} "
                         "to start over")


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
