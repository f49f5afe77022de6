"""Seeds packed into one model: the same training as each seed alone, checkpoints an unpacked unit can use,
resuming, and the unit runner's handling of a seed that diverges."""
import copy
import dataclasses
import json
import math

import pytest
import torch

import drolt.augment
import drolt.stage1
import drolt.training
import drolt.unit
from drolt.config import Stage1Config, Stage2Config
from drolt.data import share_test_sets
from drolt.model import resnet32
from drolt.packed import (PackedResNet, join_optimizer_states, join_states, pack, packed_model, parameter_names,
                          split_optimizer_state, split_state)
from drolt.stage1 import train_stage1, train_stage1_seeds
from drolt.stage2 import train_stage2, train_stage2_seeds
from drolt.training import TrainingDiverged
from drolt.unit import UnitConfig, epochs_done, run_pack

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(small_long_tail):
    return small_long_tail(30, 5, 10)


def s1(**kw):
    return Stage1Config(**{"epochs": 2, "batch_size": 32, "warmup_epochs": 1, "eval_batch_size": 256, **kw})


def seeds(cfg, *values):
    return [dataclasses.replace(cfg, seed=s) for s in values]


@pytest.fixture(scope="module")
def smaller(small_long_tail):
    return small_long_tail(12, 3, 4)  # float64 convolutions are slow on a CPU


@pytest.fixture
def float64(monkeypatch):
    """Training in float64, where a grouped convolution sums as the separate ones do: a packing mistake of any
    size shows instead of hiding in float32 rounding."""
    def unit_float(x):
        return x.to(torch.float64).div(255)
    monkeypatch.setattr(drolt.augment, "to_unit_float", unit_float)
    monkeypatch.setattr(drolt.training, "to_unit_float", unit_float)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.parametrize("cosine", [(False,) * 3, (True,) * 3, (True, False, True)], ids=["ce", "ldam", "mixed"])
def test_packed_model_computes_what_the_separate_models_compute(cosine):
    torch.manual_seed(0)
    models = [resnet32(10, cosine_head=c).double() for c in cosine]
    with torch.no_grad():  # each seed's BatchNorms their own statistics, so a mixed-up seed order would show
        for bn in (m for model in models for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t.copy_(torch.rand_like(t) + 0.5)
    packed = PackedResNet(models)
    x = torch.randn(3, 8, 3, 32, 32, dtype=torch.float64)
    for train in (True, False):
        for net in (*models, packed):
            net.train(train)
        z, logits = packed(pack(x))
        for i, model in enumerate(models):
            zi, li = model(x[i])
            torch.testing.assert_close(z[i], zi, rtol=0, atol=1e-10)
            torch.testing.assert_close(logits[i], li, rtol=0, atol=1e-10)
    for got, want in zip(split_state(packed.state_dict(), cosine), (m.state_dict() for m in models)):
        assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], rtol=0, atol=1e-10) for k in want)


@pytest.mark.parametrize("cosine", [(False, False), (True, True), (False, True, False)], ids=["ce", "ldam", "mixed"])
def test_states_split_into_what_a_resnet32_loads_and_join_back(cosine):
    torch.manual_seed(0)
    models = [resnet32(10, cosine_head=c) for c in cosine]
    packed = packed_model(models)
    opt = torch.optim.SGD(packed.parameters(), lr=0.1, momentum=0.9)
    _, logits = packed(pack(torch.randn(len(cosine), 4, 3, 32, 32)))
    logits.sum().backward()
    opt.step()
    seed_states = split_state(packed.state_dict(), packed.cosine_heads)
    opt_states = split_optimizer_state(opt.state_dict(), parameter_names(packed), packed.cosine_heads)
    for c, state, opt_state in zip(cosine, seed_states, opt_states):
        alone = resnet32(10, cosine_head=c)
        alone.load_state_dict(state)  # an unpacked unit (or stage 2) takes a packed seed's weights
        alone_opt = torch.optim.SGD(alone.parameters(), lr=0.1, momentum=0.9)
        alone_opt.load_state_dict(opt_state)  # the format of its own optimizer, momentum shaped as its weights
        assert all(alone_opt.state[p]["momentum_buffer"].shape == p.shape for p in alone.parameters())
    joined = join_states(seed_states)
    assert joined.keys() == packed.state_dict().keys()
    assert all(torch.equal(joined[k], v) for k, v in packed.state_dict().items())
    back = join_optimizer_states(opt_states, parameter_names(packed), packed.cosine_heads)
    assert back["state"].keys() == opt.state_dict()["state"].keys()
    assert all(torch.equal(back["state"][i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in opt.state_dict()["state"].items())
    one = packed_model(models[:1])  # a pack of one is the model itself, its keys unchanged once split
    assert split_state(one.state_dict(), one.cosine_heads)[0].keys() == models[0].state_dict().keys()


@pytest.mark.parametrize("methods", [("ce", "ce"), ("ldam_drw", "ldam_drw"), ("ldam_drw", "ce")],
                         ids=["ce", "ldam_drw", "mixed"])
def test_packed_units_train_exactly_as_each_unit_alone_in_float64(smaller, float64, methods):
    cfgs = [s1(method=method, seed=seed, drw_start_epoch=1, batch_size=16) for seed, method in enumerate(methods)]
    packed = train_stage1_seeds(cfgs, smaller, CPU)
    for cfg, result in zip(cfgs, packed):
        alone = train_stage1(cfg, smaller, CPU)
        for a, p in zip(alone.history, result.history):
            assert (a["train_loss"], a["top1"], a["ncm_top1"]) == pytest.approx(
                (p["train_loss"], p["top1"], p["ncm_top1"]), rel=1e-9)
        assert alone.last_state.keys() == result.last_state.keys()  # each unit its own method's head
        assert all(torch.allclose(alone.last_state[k], result.last_state[k], rtol=0, atol=1e-9)
                   for k in alone.last_state)
    assert packed[0].history[-1]["train_loss"] != packed[1].history[-1]["train_loss"]  # two units, two runs


def test_packed_seeds_in_float32_stay_within_rounding_of_each_seed_alone(tiny):
    cfg = s1(epochs=1, lr=0.01)
    for seed, result in zip((0, 1), train_stage1_seeds(seeds(cfg, 0, 1), tiny, CPU)):
        alone = train_stage1(dataclasses.replace(cfg, seed=seed), tiny, CPU)
        assert result.last["train_loss"] == pytest.approx(alone.last["train_loss"], rel=1e-4)


@pytest.mark.parametrize("methods", [("ce", "ce"), ("ce", "ldam_drw")], ids=["ce", "mixed"])
def test_a_pack_resumed_after_an_epoch_gives_the_same_numbers_as_uninterrupted(tiny, methods):
    cfgs = [s1(epochs=3, method=method, seed=seed, drw_start_epoch=2) for seed, method in enumerate(methods)]
    states = {}
    full = train_stage1_seeds(cfgs, tiny, CPU, on_epoch=lambda i, record, state: states.setdefault(
        (i, state["epoch"]), copy.deepcopy(state)))
    resumed = train_stage1_seeds(cfgs, tiny, CPU, resumes=[states[(0, 1)], states[(1, 1)]])
    for a, b in zip(full, resumed):
        assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
        assert all(torch.equal(a.last_state[k], b.last_state[k]) for k in a.last_state)


def test_a_pack_refuses_seeds_with_other_settings_or_states_at_other_epochs(tiny):
    with pytest.raises(ValueError, match="differs from seed 0 in lr"):
        train_stage1_seeds([s1(seed=0), s1(seed=1, lr=0.2)], tiny, CPU)
    with pytest.raises(ValueError, match="must differ"):
        train_stage1_seeds([s1(seed=1), s1(seed=1)], tiny, CPU)
    with pytest.raises(ValueError, match="after epochs"):
        train_stage1_seeds(seeds(s1(), 0, 1), tiny, CPU, resumes=[{"epoch": 1}, {"epoch": 2}])


def test_the_unit_runner_keeps_each_seed_in_its_own_folder_and_goes_on_without_a_seed_that_diverges(
        tiny, tmp_path, monkeypatch):
    units = [UnitConfig(method="ce", stage1=s1(seed=s)) for s in (0, 1, 2)]
    folders = [tmp_path / f"unit{s}" for s in (0, 1, 2)]
    real, calls = train_stage1_seeds, []

    def seed_1_diverges_in_epoch_1(cfgs, data, device, on_epoch=None, resumes=None):
        calls.append(([c.seed for c in cfgs], resumes is not None))
        if 1 in [c.seed for c in cfgs]:
            def stop(i, record, state):
                on_epoch(i, record, state)
                if i == len(cfgs) - 1:  # every seed's epoch 0 is on disk, as when epoch 1 then diverges
                    raise TrainingDiverged("stage 1 epoch 1 (seed 1, trained packed with others): loss is nan", 1)
            return real(cfgs, data, device, stop, resumes)
        return real(cfgs, data, device, on_epoch, resumes)
    monkeypatch.setattr(drolt.unit, "train_stage1_seeds", seed_1_diverges_in_epoch_1)
    lines = []
    results = run_pack(1, units, folders, tiny, CPU, lines.append)
    assert calls == [([0, 1, 2], False), ([0, 2], True)]  # the others resumed after their epoch 0
    assert results[1] is None and json.loads((folders[1] / "error.json").read_text())["type"] == "TrainingDiverged"
    for i in (0, 2):
        result = json.loads((folders[i] / "result.json").read_text())
        assert result["packed_seeds"] == 2 and result["last"]["epoch"] == 1
        # epoch 0 trained in a pack of 3, epoch 1 in one of 2: the unit's share of each
        epochs = [json.loads(line) for line in (folders[i] / "metrics.jsonl").open()]
        assert [r["packed_seeds"] for r in epochs] == [3, 2]
        assert result["own_time_s"] == pytest.approx(epochs[0]["epoch_time"] / 3 + epochs[1]["epoch_time"] / 2)
        assert (folders[i] / "done").exists() and not (folders[i] / "error.json").exists()
        resnet32(10).load_state_dict(torch.load(folders[i] / "model_best.pt", weights_only=True))
    assert any("[seed 2] stage 1 epoch 2/2" in line for line in lines)
    assert any("stage 1 seed 1 failed" in line and "the others go on without it" in line for line in lines)
    # run again: the finished seeds are reused, not retrained
    monkeypatch.setattr(drolt.unit, "train_stage1_seeds", real)
    again = run_pack(1, [units[0], units[2]], [folders[0], folders[2]], tiny, CPU, lines.append)
    assert [r["finished_at"] for r in again] == [results[0]["finished_at"], results[2]["finished_at"]]


def test_a_unit_that_diverges_while_catching_up_is_the_one_recorded(tiny, tmp_path, monkeypatch):
    # Seed 10 is an epoch ahead: seeds 11 and 12 train as a pack of two to catch up, and seed 12 diverges
    # there. The pack's index of the unit (1) is neither its index in the trial (2) nor its seed.
    units = [UnitConfig(method="ce", stage1=s1(seed=s)) for s in (10, 11, 12)]
    folders = [tmp_path / f"unit{i}" for i in range(3)]
    run_pack(1, units[:1], folders[:1], tiny, CPU, lambda line: None)
    for name in ("done", "result.json"):  # seed 10 back to after its first epoch, as a run stopped there
        (folders[0] / name).unlink()
    (folders[0] / "state.pt.prev").replace(folders[0] / "state.pt")
    real = drolt.training.check_finite

    def seed_12_diverges(losses, stage, epoch, names):
        real([math.nan if name == "seed 12" else loss for loss, name in zip(losses, names)], stage, epoch, names)
    monkeypatch.setattr(drolt.stage1, "check_finite", seed_12_diverges)
    lines = []
    results = run_pack(1, units, folders, tiny, CPU, lines.append)
    assert "stage 1: seed 11, seed 12 train packed into one model after epoch 0 until 1, where the others are" in lines
    assert results[2] is None and json.loads((folders[2] / "error.json").read_text())["type"] == "TrainingDiverged"
    assert all((folder / "done").exists() and not (folder / "error.json").exists() for folder in folders[:2])
    assert any("stage 1 seed 12 failed" in line for line in lines)


def test_a_pack_reports_an_epoch_only_once_every_seed_has_it_on_disk(tiny, tmp_path):
    # Ray may stop a trial at any report: seeds saved to different epochs could only resume in smaller packs.
    units = [UnitConfig(method="ce", stage1=s1(seed=s)) for s in (0, 1)]
    folders = [tmp_path / f"unit{s}" for s in (0, 1)]
    seen = []
    run_pack(1, units, folders, tiny, CPU, lambda line: None,
                    lambda i, record: seen.append((i, record["epoch"], [epochs_done(f) for f in folders])))
    assert [(i, epoch) for i, epoch, _ in seen] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert all(done == [epoch + 1, epoch + 1] for _, epoch, done in seen)


def test_seeds_behind_train_packed_until_they_reach_the_others_then_all_go_on_together(tiny, tmp_path, monkeypatch):
    # e.g. a grid first run unpacked and interrupted, resumed with pack_seeds: or a process killed mid-save
    units = [UnitConfig(method="ce", stage1=s1(seed=s, epochs=4)) for s in (0, 1, 2)]
    folders = [tmp_path / f"unit{s}" for s in (0, 1, 2)]

    class Stop(Exception):
        pass

    def stop_after(epochs):
        def on_epoch(i, record, state):
            drolt.unit._epoch_saver(folders[i], 4, lambda line: None, None)(record, state)
            if record["epoch"] + 1 == epochs:
                raise Stop
        return on_epoch
    for i, epochs in ((0, 2), (1, 1)):  # seed 0 after epoch 2, seed 1 after epoch 1, seed 2 not started
        with pytest.raises(Stop):
            train_stage1_seeds([units[i].stage1], tiny, CPU, lambda _, r, s, on=stop_after(epochs), i=i: on(i, r, s))
    real, calls = train_stage1_seeds, []

    def recorded(cfgs, data, device, on_epoch=None, resumes=None):
        calls.append(([c.seed for c in cfgs], [r["epoch"] for r in resumes] if resumes else None))
        return real(cfgs, data, device, on_epoch, resumes)
    monkeypatch.setattr(drolt.unit, "train_stage1_seeds", recorded)
    results = run_pack(1, units, folders, tiny, CPU, lambda line: None)
    assert calls == [([2], None), ([1, 2], [1, 1]), ([0, 1, 2], [2, 2, 2])]
    for folder, result in zip(folders, results):
        epochs = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
        assert [r["epoch"] for r in epochs] == [0, 1, 2, 3] and result["last"]["epoch"] == 3
    assert [r["packed_seeds"] for r in map(json.loads, (folders[2] / "metrics.jsonl").open())] == [1, 2, 3, 3]


def test_a_unit_that_diverges_alone_is_recorded_and_a_retried_trial_leaves_it_be(tiny, tmp_path):
    unit, folder = UnitConfig(method="ce", stage1=s1(lr=1e30, warmup_epochs=0)), tmp_path / "unit"
    assert run_pack(1, [unit], [folder], tiny, CPU, lambda line: None) == [None]
    error = json.loads((folder / "error.json").read_text())
    assert error["type"] == "TrainingDiverged" and "stage 1 epoch 1:" in error["message"]  # counted from 1
    # a trial Ray retries (its process died after this seed's pack went on) does not train it again
    assert run_pack(1, [unit], [folder], tiny, CPU, lambda line: None) == [None]
    assert json.loads((folder / "error.json").read_text()) == error and not (folder / "state.pt").exists()


def test_packed_stage_2_seeds_train_exactly_as_each_seed_alone_in_float64(smaller, float64):
    # each seed from its own stage 1; the faithful mode's classifier restarts from each seed's own best epoch
    stage1 = [train_stage1(s1(seed=s, epochs=1, batch_size=16), smaller, CPU).model_state for s in (0, 1)]
    cfg = Stage2Config(epochs=3, classifier_epochs=1, batch_size=16, eval_batch_size=256, mode="faithful")
    states = {}
    packed = train_stage2_seeds(seeds(cfg, 0, 1), smaller, stage1, CPU,
                                on_epoch=lambda i, record, state: states.setdefault((i, state["epoch"]),
                                                                                    copy.deepcopy(state)))
    for i, (seed, result) in enumerate(zip((0, 1), packed)):
        alone = train_stage2(dataclasses.replace(cfg, seed=seed), smaller, stage1[i], CPU)
        for a, p in zip(alone.history, result.history):
            assert (a["loss"], a["robust_loss"], a["top1"], a["ncm_top1"]) == pytest.approx(
                (p["loss"], p["robust_loss"], p["top1"], p["ncm_top1"]), rel=1e-9, nan_ok=True)
            assert a["radii"] == pytest.approx(p["radii"], rel=1e-9)
        # BatchNorm's step counter (unused with its momentum set) is one per pack: after the faithful reload it
        # counts the steps of the first seed's best epoch
        assert all(torch.allclose(alone.last_state[k], result.last_state[k], rtol=0, atol=1e-9)
                   for k in alone.last_state if not k.endswith("num_batches_tracked"))
        # a packed seed's state is an unpacked stage 2's: it resumes alone to the same end
        resumed = train_stage2(dataclasses.replace(cfg, seed=seed), smaller, stage1[i], CPU, resume=states[(i, 1)])
        assert all(torch.allclose(alone.last_state[k], resumed.last_state[k], rtol=0, atol=1e-9)
                   for k in alone.last_state if not k.endswith("num_batches_tracked"))
    resumed = train_stage2_seeds(seeds(cfg, 0, 1), smaller, stage1, CPU, resumes=[states[(0, 2)], states[(1, 2)]])
    assert [r.history[-1]["loss"] for r in resumed] == [r.history[-1]["loss"] for r in packed]


def _losses(results, key):
    """Each seed's `key` per epoch, a NaN (an epoch without the figure) as None, so that lists compare."""
    return [[None if record[key] != record[key] else record[key] for record in result.history] for result in results]


@pytest.mark.parametrize("methods", [("ce", "ce"), ("ldam_drw", "ldam_drw"), ("ce", "ldam_drw")],
                         ids=["ce", "ldam_drw", "mixed"])
def test_packed_stage_1_under_graph_step_gives_the_eager_packs_records(tiny, fake_cuda_graphs, methods):
    # Stand-in graphs rerun the recorded packed step on its input buffers: a packed batch or the seeds' labels
    # not copied in would train every replay on the recording's batch. A recording per learning rate of the
    # warm-up (2), and LDAM-DRW's another when its class weights appear.
    cfgs = [s1(method=method, seed=seed, epochs=3, warmup_epochs=2, drw_start_epoch=2)
            for seed, method in enumerate(methods)]
    eager = train_stage1_seeds(cfgs, tiny, CPU)
    graphed = train_stage1_seeds([dataclasses.replace(cfg, graph_step=True) for cfg in cfgs], tiny, CPU)
    for key in ("train_loss", "top1", "ncm_top1"):
        assert _losses(graphed, key) == _losses(eager, key)
    assert len(fake_cuda_graphs) == (3 if "ldam_drw" in methods else 2)
    assert all(g.replays > 0 for g in fake_cuda_graphs)


def test_packed_stage_2_under_graph_step_gives_the_eager_packs_records(smaller, fake_cuda_graphs):
    # The feature epochs replay one recording, each seed's centroids of the pass copied in with the batch.
    stage1 = [train_stage1(s1(seed=s, epochs=1, batch_size=16), smaller, CPU).model_state for s in (0, 1)]
    cfg = Stage2Config(epochs=3, classifier_epochs=1, batch_size=16, eval_batch_size=256)
    eager = train_stage2_seeds(seeds(cfg, 0, 1), smaller, stage1, CPU)
    graphed = train_stage2_seeds(seeds(dataclasses.replace(cfg, graph_step=True), 0, 1), smaller, stage1, CPU)
    for key in ("loss", "robust_loss", "top1", "ncm_top1", "radii"):
        assert _losses(graphed, key) == _losses(eager, key)
    assert len(fake_cuda_graphs) == 1 and fake_cuda_graphs[0].replays > 1


def test_faithful_and_clean_units_packed_together_train_exactly_as_each_alone_in_float64(smaller, float64):
    # Stage-2 units may differ in their mode too: each keeps its loss's quirks, its own restart of the
    # classifier phase (faithful: from its best feature epoch; clean: from its last) and what it reports.
    stage1 = [train_stage1(s1(seed=s, epochs=1, batch_size=16), smaller, CPU).model_state for s in (0, 1)]
    cfg = Stage2Config(epochs=3, classifier_epochs=1, batch_size=16, eval_batch_size=256)
    cfgs = [dataclasses.replace(cfg, seed=0, mode=mode) for mode in ("faithful", "clean")]
    starts = [stage1[0], stage1[1]]
    packed = train_stage2_seeds(cfgs, smaller, starts, CPU)
    for unit_cfg, start, result in zip(cfgs, starts, packed):
        alone = train_stage2(unit_cfg, smaller, start, CPU)
        assert result.selected == alone.selected == ("best" if unit_cfg.mode == "faithful" else "last")
        for a, p in zip(alone.history, result.history, strict=True):
            assert (a["loss"], a["robust_loss"], a["top1"], a["ncm_top1"]) == pytest.approx(
                (p["loss"], p["robust_loss"], p["top1"], p["ncm_top1"]), rel=1e-9, nan_ok=True)
            assert a["radii"] == pytest.approx(p["radii"], rel=1e-9)
        assert all(torch.allclose(alone.last_state[k], result.last_state[k], rtol=0, atol=1e-9)
                   for k in alone.last_state if not k.endswith("num_batches_tracked"))
    assert packed[0].history[0]["robust_loss"] != packed[1].history[0]["robust_loss"]  # two modes, two losses
    with pytest.raises(ValueError, match="must differ in seed or mode"):
        train_stage2_seeds([cfgs[1], cfgs[1]], smaller, starts, CPU)
    with pytest.raises(ValueError, match="seed 1 clean differs from seed 0 faithful in temperature"):
        train_stage2_seeds([cfgs[0], dataclasses.replace(cfgs[1], seed=1, temperature=2.0)], smaller, starts, CPU)


def test_stage_2_units_of_other_rhos_packed_together_train_exactly_as_each_alone_in_float64(
        smaller, small_long_tail, float64):
    # A dataset's rhos differ in their training set (its size included: the evaluation pads the shorter one, here
    # over chunks of 40) and class weights, not in the length of their class-aware passes: each unit keeps its
    # own of all of them.
    other = small_long_tail(12, 3, 2)
    assert len(other.train_labels) != len(smaller.train_labels)
    datas = share_test_sets([smaller, other])  # as a trial holds them: the test set evaluated once for both
    assert datas[1].test_images is datas[0].test_images and datas[1].train_images is other.train_images
    stage1 = [train_stage1(s1(seed=0, epochs=1, batch_size=16), data, CPU).model_state for data in datas]
    cfg = Stage2Config(epochs=2, classifier_epochs=1, batch_size=16, eval_batch_size=40, classifier_weights="bal")
    packed = train_stage2_seeds([cfg, cfg], datas, stage1, CPU)
    for data, start, result in zip(datas, stage1, packed):
        alone = train_stage2(cfg, data, start, CPU)
        for a, p in zip(alone.history, result.history, strict=True):
            assert (a["loss"], a["robust_loss"], a["top1"], a["ncm_top1"], a["few"]) == pytest.approx(
                (p["loss"], p["robust_loss"], p["top1"], p["ncm_top1"], p["few"]), rel=1e-9, nan_ok=True)
            assert a["radii"] == pytest.approx(p["radii"], rel=1e-9)
        assert all(torch.allclose(alone.last_state[k], result.last_state[k], rtol=0, atol=1e-9)
                   for k in alone.last_state if not k.endswith("num_batches_tracked"))
    assert packed[0].history[0]["loss"] != packed[1].history[0]["loss"]


def test_stage_2_units_whose_passes_differ_in_length_are_refused_naming_them(smaller, small_long_tail):
    # A shuffled pass is as long as the rho's training set: such units cannot take their batches in step.
    other = small_long_tail(12, 3, 2)
    cfg = Stage2Config(epochs=1, classifier_epochs=0, batch_size=16, sampler="shuffle")
    starts = [resnet32(10).state_dict()] * 2
    lengths = r"passes must be of one length; got \{'seed 0 rho 4': 62, 'seed 0 rho 2': 83\}"
    with pytest.raises(ValueError, match=lengths):
        train_stage2_seeds([cfg, cfg], [smaller, other], starts, CPU)
    with pytest.raises(ValueError, match="must differ in seed or mode or rho"):
        train_stage2_seeds([cfg, cfg], [smaller, smaller], starts, CPU)
