"""End-to-end stage 1 -> stage 2 on tiny synthetic data: records, selection, resume and determinism."""
import dataclasses
import math

import pytest
import torch

from drolt.augment import apply_draws, stage1_train_transform, stage2_train_transform
from drolt.config import Stage1Config, Stage2Config
from drolt.model import resnet32
from drolt.stage1 import lr_at, train_stage1
from drolt.packed import packed_model
from drolt.stage2 import centroid_banks, train_stage2
from drolt.training import TrainingDiverged, augmented_batches

CPU = torch.device("cpu")
STAGE2_FIELDS = {"stage", "epoch", "phase", "lr", "loss", "ce_loss", "robust_loss", "top1", "top5", "per_class",
                 "many", "medium", "few", "many_n", "medium_n", "few_n", "ncm_top1", "ncm_many", "ncm_medium",
                 "ncm_few", "radii", "epoch_time", "train_images_per_s"}


@pytest.fixture(scope="module")
def tiny(small_long_tail):
    return small_long_tail(30, 5, 10)


def s1(**kw):
    return Stage1Config(**{"epochs": 2, "batch_size": 32, "warmup_epochs": 1, "eval_batch_size": 256, **kw})


def s2(**kw):
    return Stage2Config(**{"epochs": 3, "classifier_epochs": 1, "batch_size": 64, "eval_batch_size": 256, **kw})


@pytest.fixture(scope="module")
def stage1_weights(tiny):
    return train_stage1(s1(), tiny, CPU).model_state


def _strip_times(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "train_images_per_s")} for r in history]


def _same(a, b):
    """Records equal, NaN == NaN."""
    assert a.keys() == b.keys()
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, float) and math.isnan(va):
            assert isinstance(vb, float) and math.isnan(vb), k
        elif isinstance(va, list):
            assert len(va) == len(vb) and all((x == y) or (x != x and y != y) for x, y in zip(va, vb)), k
        else:
            assert va == vb, k


def test_lr_schedule_warms_up_then_drops_100x_at_160_and_180():
    cfg = Stage1Config()
    assert [round(lr_at(cfg, e), 6) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == \
        [0.02, 0.1, 0.1, 0.1, 0.001, 0.001, 1e-5, 1e-5]


def test_stage1_then_stage2_produce_every_field_of_the_epoch_record(tiny, stage1_weights):
    result = train_stage2(s2(), tiny, stage1_weights, CPU)
    assert [r["phase"] for r in result.history] == ["feature", "feature", "classifier"]
    for record in result.history:
        assert STAGE2_FIELDS <= record.keys()
        assert len(record["per_class"]) == 10 and len(record["radii"]) == 10
        assert 0 <= record["top1"] <= 100 and 0 <= record["ncm_top1"] <= 100
    assert result.history[0]["robust_loss"] > 0
    assert math.isnan(result.history[-1]["robust_loss"])  # no robust loss while re-training the classifier
    assert result.history[0]["lr"] == 0.005 and result.history[-1]["lr"] == 0.01


def test_radii_learn_in_feature_phase_and_freeze_in_classifier_phase(tiny, stage1_weights):
    history = train_stage2(s2(mode="clean"), tiny, stage1_weights, CPU).history
    assert history[0]["radii"] != [1.0] * 10
    assert history[2]["radii"] == history[1]["radii"]


def test_faithful_classifier_phase_starts_from_best_ncm_feature_epoch(tiny, stage1_weights):
    states = []
    history = train_stage2(s2(epochs=4, classifier_epochs=1), tiny, stage1_weights, CPU,
                           on_epoch=lambda record, state: states.append(state["model"])).history
    best = max(history[:3], key=lambda r: (r["ncm_top1"], -r["epoch"]))  # ties keep the earlier epoch
    assert best["epoch"] != 2, "the test needs a best epoch other than the last feature epoch"
    # The classifier epoch trains fc alone with the model in eval mode: the rest is the reloaded best epoch.
    backbone = [k for k in states[3] if not k.startswith("fc.")]
    assert all(torch.equal(states[3][k], states[best["epoch"]][k]) for k in backbone)
    # As the reference, whose checkpoint holds the model alone: the radii stay as the last feature epoch left them.
    assert history[3]["radii"] == history[2]["radii"] != best["radii"]


def test_clean_classifier_phase_goes_on_from_the_last_feature_epoch(tiny, stage1_weights):
    states = []
    history = train_stage2(s2(epochs=4, classifier_epochs=1, mode="clean"), tiny, stage1_weights, CPU,
                           on_epoch=lambda record, state: states.append(state["model"])).history
    best = max(history[:3], key=lambda r: (r["ncm_top1"], -r["epoch"]))
    assert best["epoch"] != 2, "the test needs a best epoch other than the last feature epoch"
    backbone = [k for k in states[3] if not k.startswith("fc.")]
    assert all(torch.equal(states[3][k], states[2][k]) for k in backbone)


def test_faithful_reports_best_on_test_and_clean_reports_last(tiny, stage1_weights):
    faithful = train_stage1(s1(epochs=3), tiny, CPU)
    clean = train_stage1(s1(epochs=3, mode="clean"), tiny, CPU)
    assert faithful.selected == "best" and clean.selected == "last"
    assert faithful.best["top1"] == max(r["top1"] for r in faithful.history)
    assert clean.reported is clean.last and clean.last["epoch"] == 2
    # The same seed trains the same model: only the hand-over rule differs.
    _same(_strip_times(faithful.history)[-1], _strip_times(clean.history)[-1])


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tiny):
    a = train_stage1(s1(), tiny, CPU)
    b = train_stage1(s1(), tiny, CPU)
    for ra, rb in zip(_strip_times(a.history), _strip_times(b.history)):
        _same(ra, rb)
    c = train_stage1(s1(seed=1), tiny, CPU)
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]


def _run_with_states(train, *args):
    states = []
    result = train(*args, on_epoch=lambda record, state: states.append(_copy(state)))
    return result, states


def _copy(state):
    # The callback's state shares lists with the running loop; a saved file would be a snapshot.
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_stage1_resumed_after_epoch_k_gives_the_same_numbers_as_uninterrupted(tiny):
    cfg = s1(epochs=3)
    full, states = _run_with_states(train_stage1, cfg, tiny, CPU)
    resumed = train_stage1(cfg, tiny, CPU, resume=states[0])
    for ra, rb in zip(_strip_times(full.history), _strip_times(resumed.history)):
        _same(ra, rb)
    assert all(torch.equal(full.model_state[k], resumed.model_state[k]) for k in full.model_state)


def test_a_state_in_memory_resumes_twice_to_the_same_run_and_stays_as_given(tiny, stage1_weights):
    # e.g. two branches from one checkpoint: the second must not see the first one's epochs
    for train, args in ((train_stage1, (s1(epochs=3), tiny)), (train_stage2, (s2(), tiny, stage1_weights))):
        _, states = _run_with_states(train, *args, CPU)
        state = states[0]
        first, second = (train(*args, CPU, resume=state) for _ in range(2))
        assert len(state["history"]) == 1
        assert [r["epoch"] for r in second.history] == list(range(len(first.history)))
        for ra, rb in zip(_strip_times(first.history), _strip_times(second.history), strict=True):
            _same(ra, rb)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_stage2_resumed_across_phase_boundary_gives_the_same_numbers(tiny, stage1_weights, mode):
    cfg = s2(mode=mode)
    full, states = _run_with_states(train_stage2, cfg, tiny, stage1_weights, CPU)
    resumed = train_stage2(cfg, tiny, stage1_weights, CPU, resume=states[1])  # stopped before the classifier
    for ra, rb in zip(_strip_times(full.history), _strip_times(resumed.history)):
        _same(ra, rb)
    assert all(torch.equal(full.model_state[k], resumed.model_state[k]) for k in full.model_state)


def test_ncm_every_skips_ncm_passes_but_keeps_ncm_in_the_last_and_best_records(tiny):
    # NCM does not touch training or the choice of the best epoch (test top-1): the same run, fewer passes.
    plain = train_stage1(s1(epochs=4), tiny, CPU)
    sparse = train_stage1(s1(epochs=4, ncm_every=3), tiny, CPU)
    assert plain.best["epoch"] == 0, "the test needs a best epoch whose NCM pass was skipped"
    ncm_keys = {"ncm_top1", "ncm_many", "ncm_medium", "ncm_few"}
    for p, q in zip(_strip_times(plain.history), _strip_times(sparse.history), strict=True):
        if q["epoch"] == 1:  # neither every third, the last nor the best: skipped
            assert all(math.isnan(q[k]) for k in ncm_keys)
            q = {**q, **{k: p[k] for k in ncm_keys}}
        _same(p, q)  # epoch 0 (best, filled in at the end), 2 (third), 3 (last) as in the plain run
    _same(*_strip_times([sparse.best, plain.best]))
    with pytest.raises(ValueError, match="ncm_every"):
        s1(ncm_every=0).validate()


def test_the_centroid_banks_views_do_not_depend_on_eval_batch_size(tiny, stage1_weights):
    # eval_batch_size is a speed setting: how many images one forward pass takes, not which views they get.
    stream = torch.randperm(len(tiny.train_labels), generator=torch.Generator().manual_seed(1)).repeat(2)
    seen = {}
    for size in (256, 37):
        views = []

        def spy(x, d):
            views.append(apply_draws(x, d))
            return views[-1]
        model = resnet32(tiny.num_classes)
        model.load_state_dict(stage1_weights)
        gen = torch.Generator().manual_seed(0)
        one = packed_model([model])
        banks = centroid_banks(one, one, [tiny], [stream], s2(eval_batch_size=size), [gen], spy)
        seen[size] = banks[0], torch.cat(views)
    assert torch.equal(seen[256][1], seen[37][1])
    assert torch.allclose(seen[256][0], seen[37][0], rtol=0, atol=1e-5)


def test_ldam_drw_baseline_trains_with_a_cosine_head(tiny):
    result = train_stage1(s1(method="ldam_drw", drw_start_epoch=1), tiny, CPU)
    assert "fc.weight" in result.model_state and "fc.bias" not in result.model_state
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_diverging_loss_stops_with_the_stage_and_epoch(tiny):
    with pytest.raises(TrainingDiverged, match="stage 1 epoch 1: "):
        train_stage1(s1(lr=1e30, warmup_epochs=0), tiny, CPU)


@pytest.mark.parametrize("stage2_steps", [False, True])
def test_batches_augmented_together_are_the_images_of_one_call_per_batch(tiny, stage2_steps):
    stream = torch.randperm(len(tiny.train_labels), generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    chunked = list(augmented_batches(tiny, stream, 16, g1, 4, stage2_steps, stage2_steps))
    transform = stage2_train_transform if stage2_steps else stage1_train_transform
    assert len(chunked) == math.ceil(len(stream) / 16)
    for (x, y), idx in zip(chunked, torch.split(stream, 16)):
        assert torch.equal(x, transform(tiny.train_images[idx], g2))
        assert torch.equal(y, tiny.train_labels[idx])
    assert torch.equal(g1.get_state(), g2.get_state())  # the next epoch continues the same random stream


def test_augment_batches_does_not_change_what_either_stage_computes(tiny, stage1_weights):
    for one, many in [(train_stage1(s1(augment_batches=1), tiny, CPU), train_stage1(s1(augment_batches=3), tiny, CPU)),
                      (train_stage2(s2(augment_batches=1), tiny, stage1_weights, CPU),
                       train_stage2(s2(augment_batches=3), tiny, stage1_weights, CPU))]:
        for ra, rb in zip(_strip_times(one.history), _strip_times(many.history)):
            _same(ra, rb)


def test_graph_augment_gives_the_plain_records_when_its_recordings_replay(tiny, stage1_weights, fake_cuda_graphs):
    # Stand-in graphs run the recorded sync-free augmentation on the CPU: full chunks (2 batches, or a
    # 64-image centroid-bank chunk) replay it, short last chunks take the grouped path. Stage 1 draws no
    # AutoAugment plan and no Cutout holes, so its recordings take None arguments.
    plain_1, plain_2 = s1(augment_batches=2, eval_batch_size=64), s2(augment_batches=2, eval_batch_size=64)
    graph_1, graph_2 = (dataclasses.replace(cfg, graph_augment=True) for cfg in (plain_1, plain_2))
    for plain, graphed in [(train_stage1(plain_1, tiny, CPU), train_stage1(graph_1, tiny, CPU)),
                           (train_stage2(plain_2, tiny, stage1_weights, CPU),
                            train_stage2(graph_2, tiny, stage1_weights, CPU))]:
        assert len(plain.history) == len(graphed.history)
        for ra, rb in zip(_strip_times(plain.history), _strip_times(graphed.history)):
            _same(ra, rb)
    # stage 1's training chunks, stage 2's training and bank chunks
    assert len(fake_cuda_graphs) == 3 and all(g.replays > 0 for g in fake_cuda_graphs)


@pytest.mark.parametrize("method, schedule", [("ce", {"epochs": 3, "warmup_epochs": 2}),
                                              ("ldam_drw", {"epochs": 3, "drw_start_epoch": 2})])
def test_graph_step_gives_the_plain_records_with_a_recording_per_learning_rate_and_weights(
        tiny, fake_cuda_graphs, method, schedule):
    # Stand-in graphs rerun the recorded step on its input buffers: full batches replay it (so a missing
    # copy-in would train on one batch over and over), the short last batch runs eagerly. The learning rate
    # changes after the first epoch (warm-up) or the class weights appear (DRW): two recordings each.
    plain = train_stage1(s1(method=method, **schedule), tiny, CPU)
    graphed = train_stage1(s1(method=method, graph_step=True, **schedule), tiny, CPU)
    for ra, rb in zip(_strip_times(plain.history), _strip_times(graphed.history), strict=True):
        _same(ra, rb)
    assert len(fake_cuda_graphs) == 2 and all(g.replays > 1 for g in fake_cuda_graphs)


def test_stage_2_graph_step_gives_the_plain_records_with_one_recording_for_its_feature_epochs(
        tiny, stage1_weights, fake_cuda_graphs):
    # Full batches of the feature epochs replay the step, each pass's centroids copied in with the batch
    # (a recording that kept the first pass's would train later epochs against stale centroids).
    plain = train_stage2(s2(), tiny, stage1_weights, CPU)
    graphed = train_stage2(s2(graph_step=True), tiny, stage1_weights, CPU)
    for ra, rb in zip(_strip_times(plain.history), _strip_times(graphed.history), strict=True):
        _same(ra, rb)
    assert len(fake_cuda_graphs) == 1 and fake_cuda_graphs[0].replays > 1


def test_classifier_epochs_train_on_the_pass_and_views_the_reference_gives_them(tiny, stage1_weights, monkeypatch):
    # The reference builds a centroid bank in every epoch, so its classifier epochs train on every second
    # sampler pass, after the bank's augmentation draws: what a third feature epoch would train on.
    import drolt.stage2 as stage2
    seen = {}

    def spy(name):
        original = getattr(stage2, name)

        def run(model, data, streams, cfg, *args):
            (gen,) = args[-2]  # feature_epoch(..., step, gens, augment), classifier_epoch(..., weights, gens, augment)
            seen[name] = (streams[0].clone(), gen.get_state())
            return original(model, data, streams, cfg, *args)
        monkeypatch.setattr(stage2, name, run)
    spy("feature_epoch")
    spy("classifier_epoch")
    train_stage2(s2(epochs=3, classifier_epochs=0), tiny, stage1_weights, CPU)
    feature_stream, feature_gen = seen["feature_epoch"]  # the third feature epoch's
    train_stage2(s2(epochs=3, classifier_epochs=1), tiny, stage1_weights, CPU)
    classifier_stream, classifier_gen = seen["classifier_epoch"]
    assert torch.equal(classifier_stream, feature_stream) and torch.equal(classifier_gen, feature_gen)


def test_a_shortened_schedule_warns_of_the_decay_and_warm_up_it_never_finishes():
    # e.g. --stage1-epochs 3 with the reference's 5 warm-up epochs and decay at 160 and 180: legal, but said
    found = s1(epochs=3, warmup_epochs=5).warnings()
    assert any("lr_decay_epochs [160, 180] fall at or after the last of 3 epochs" in w for w in found)
    assert any("warmup_epochs 5 outlasts the 3 epochs" in w and "ends at 0.06" in w for w in found)
    assert s1(epochs=3, warmup_epochs=3, lr_decay_epochs=[2]).warnings() == []
