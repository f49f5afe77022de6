"""Each speed setting computes what the plain path computes: same seed, a few SGD steps, losses compared."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from drolt import speed
from drolt.config import Stage1Config, Stage2Config
from drolt.model import resnet32
from drolt.stage1 import train_stage1
from drolt.stage2 import train_stage2

CPU = torch.device("cpu")


def _losses(channels_last=False, precision="fp32", compile=False, steps=3):
    """Per-step training losses of ResNet-32 on fixed random batches, from a fixed init."""
    torch.manual_seed(0)
    model = resnet32(10)
    net = speed.prepare(model, Stage1Config(channels_last=channels_last, compile=compile, batch_size=16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = speed.model_input(torch.randn(16, 3, 32, 32, generator=gen), channels_last)
        y = torch.randint(0, 10, (16,), generator=gen)
        with speed.autocast(CPU, precision):
            _, logits = net(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses)


@pytest.fixture(scope="module")
def plain():
    return _losses()


# Other kernels sum in another order: float32 rounding differs, and SGD steps amplify it a little.
def test_channels_last_gives_the_plain_losses_within_0_1_percent(plain):
    assert torch.allclose(_losses(channels_last=True), plain, rtol=1e-3, atol=0)


def test_bf16_autocast_gives_the_plain_losses_within_2_percent(plain):
    # bfloat16 keeps 8 bits of mantissa: per-step losses agree to about 1%, not to float32 precision.
    assert torch.allclose(_losses(precision="bf16"), plain, rtol=0.02, atol=0)


def test_compiled_model_gives_the_plain_losses_within_0_1_percent(plain):
    assert torch.allclose(_losses(compile=True, steps=2), plain[:2], rtol=1e-3, atol=0)


def test_compiled_and_channels_last_models_keep_plain_state_dict_keys():
    model = resnet32(10)
    keys = set(model.state_dict())
    speed.prepare(model, Stage1Config(channels_last=True, compile=True))
    assert set(model.state_dict()) == keys  # checkpoints stay loadable without the speed settings


def test_unknown_precision_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="fp32, bf16"):
        Stage1Config(precision="fp16").validate()


@pytest.fixture(scope="module")
def small(small_long_tail):
    return small_long_tail(20, 4, 5)


def test_a_compiled_stage_1_epoch_gives_the_plain_epoch_record(small):
    # A whole epoch: train-mode steps, then eval-mode feature passes whose outputs extract() keeps across
    # calls (with CUDA graphs those would be overwritten by the next replay without its copies).
    data = small
    cfg = dict(epochs=1, batch_size=28, lr=0.01, warmup_epochs=1, eval_batch_size=36)
    assert len(data.train_labels) % 28 and len(data.train_labels) % 36 and len(data.test_labels) % 36
    plain = train_stage1(Stage1Config(**cfg), data, CPU).last
    torch._dynamo.reset()
    counters.clear()
    compiled = train_stage1(Stage1Config(**cfg, compile=True, compile_mode="reduce-overhead"), data, CPU).last
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-3)
    assert compiled["top1"] == plain["top1"] and compiled["ncm_top1"] == plain["ncm_top1"]
    # One training and one evaluation graph: the short last batch and the evaluation's last chunks run
    # eagerly instead of costing a compilation (and a CUDA-graph recording) each.
    assert counters["stats"]["unique_graphs"] == 2


def test_compiled_stage_2_losses_give_the_plain_feature_epoch(small):
    stage1 = train_stage1(Stage1Config(epochs=1, batch_size=32, lr=0.01, warmup_epochs=1), small, CPU).last_state
    cfg = dict(epochs=1, classifier_epochs=0, batch_size=32)  # 2 batch sizes: a full and a last short batch
    plain = train_stage2(Stage2Config(**cfg), small, stage1, CPU).last
    compiled = train_stage2(Stage2Config(**cfg, compile_loss=True), small, stage1, CPU).last
    for key in ("loss", "ce_loss", "robust_loss"):
        assert compiled[key] == pytest.approx(plain[key], rel=1e-3), key  # 0.1%, as the compiled model
    assert compiled["radii"] == pytest.approx(plain["radii"], rel=1e-3)


def test_compile_step_records_the_compiled_model_in_both_stages(small, fake_cuda_graphs):
    # graph_step's recorded step runs the model compiled (on a GPU its kernels go into the step's graph);
    # stand-in graphs rerun the step on each full batch. It trains as `compile` does, which
    # test_a_compiled_stage_1_epoch_gives_the_plain_epoch_record compares with the plain path.
    cfg1 = dict(epochs=2, batch_size=28, lr=0.01, warmup_epochs=1, eval_batch_size=36)
    compiled_1 = train_stage1(Stage1Config(**cfg1, compile=True), small, CPU)
    torch._dynamo.reset()
    counters.clear()
    step_1 = train_stage1(Stage1Config(**cfg1, graph_step=True, compile_step=True), small, CPU)
    # Only the step ran compiled, at the training batch size; the short last batch and the evaluation eagerly.
    assert counters["stats"]["unique_graphs"] == 1
    # Stage 2 with `compile` in both runs, so that their centroid banks come from the same compiled pass.
    cfg2 = dict(epochs=2, classifier_epochs=0, batch_size=28, eval_batch_size=36, compile=True)
    compiled_2 = train_stage2(Stage2Config(**cfg2), small, compiled_1.last_state, CPU)
    step_2 = train_stage2(Stage2Config(**cfg2, graph_step=True, compile_step=True), small, compiled_1.last_state,
                          CPU)
    for compiled, stepped, keys in ((compiled_1, step_1, ("train_loss",)),
                                    (compiled_2, step_2, ("loss", "robust_loss"))):
        for a, b in zip(compiled.history, stepped.history, strict=True):
            for key in keys:
                assert b[key] == pytest.approx(a[key], rel=1e-6), key
            assert b["top1"] == a["top1"] and b["ncm_top1"] == a["ncm_top1"]
    assert step_2.last["radii"] == pytest.approx(compiled_2.last["radii"], rel=1e-6)
    # one recording per stage (stage 1's learning rate is the same in both epochs), replayed batch by batch
    assert len(fake_cuda_graphs) == 2 and all(g.replays > 1 for g in fake_cuda_graphs)


def test_compile_step_without_graph_step_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="graph_step: true"):
        Stage2Config(compile_step=True).validate()


def test_fused_sgd_gives_the_plain_updates_in_both_stages(small):
    # One fused kernel computes SGD's formula: the same losses and, to float32 rounding, the same weights.
    cfg1 = dict(epochs=2, batch_size=32, lr=0.01, warmup_epochs=1)
    plain_1, fused_1 = (train_stage1(Stage1Config(**cfg1, fused_sgd=f), small, CPU) for f in (False, True))
    cfg2 = dict(epochs=2, classifier_epochs=1, batch_size=32)  # both of stage 2's optimizers
    plain_2, fused_2 = (train_stage2(Stage2Config(**cfg2, fused_sgd=f), small, plain_1.last_state, CPU)
                        for f in (False, True))
    for plain, fused, key in ((plain_1, fused_1, "train_loss"), (plain_2, fused_2, "loss")):
        assert [r[key] for r in fused.history] == pytest.approx([r[key] for r in plain.history], rel=1e-6)
        for name, weight in plain.last_state.items():
            assert torch.allclose(fused.last_state[name], weight, rtol=0, atol=1e-5), name
    assert fused_2.last["radii"] == pytest.approx(plain_2.last["radii"], rel=1e-6)
    # ... and the setting reaches the stages' optimizers (their saved states say how they step)
    states = []
    train_stage1(Stage1Config(**cfg1, fused_sgd=True), small, CPU, on_epoch=lambda r, s: states.append(s))
    train_stage2(Stage2Config(**cfg2, fused_sgd=True), small, plain_1.last_state, CPU,
                 on_epoch=lambda r, s: states.append(s))
    optimizers = [states[0]["optimizer"], states[-1]["opt_features"], states[-1]["opt_classifier"]]
    assert all(group["fused"] is True for opt in optimizers for group in opt["param_groups"])


def test_a_resumed_optimizer_keeps_the_runs_own_fused_setting():
    # A state saved by a run with other speed settings brings its momentum, not its way of computing.
    model = torch.nn.Linear(3, 2)
    saved = speed.sgd(model.parameters(), 0.1, 0.9, 1e-4, fused=False)
    model(torch.ones(1, 3)).sum().backward()
    saved.step()
    fused = speed.sgd(model.parameters(), 0.1, 0.9, 1e-4, fused=True)
    speed.load_optimizer_state(fused, saved.state_dict())
    assert fused.param_groups[0]["fused"] is True
    assert torch.equal(fused.state[model.weight]["momentum_buffer"], saved.state[model.weight]["momentum_buffer"])
    plain = speed.sgd(model.parameters(), 0.1, 0.9, 1e-4, fused=False)
    speed.load_optimizer_state(plain, fused.state_dict())
    # None, not False: PyTorch's default (multi-tensor kernels on a GPU) stays on
    assert plain.param_groups[0]["fused"] is None


def test_unknown_compile_mode_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="reduce-overhead"):
        Stage1Config(compile_mode="fast").validate()


def test_graphed_records_once_per_shape_and_replays_on_each_calls_own_data(fake_cuda_graphs):
    recordings = fake_cuda_graphs
    run = speed.graphed(lambda x, y: x * 2 + y, sizes=(4, 6), eager=lambda x, y: x * 2 + y + 100)
    a, b = torch.arange(4.0), torch.ones(4)
    first = run(a, b)
    second = run(a + 10, b)  # same shapes: the first recording, replayed on the new data
    third = run(a + 20, b)
    assert torch.equal(first, a * 2 + 1)
    assert torch.equal(second, (a + 10) * 2 + 1), "a later replay must not overwrite an earlier result"
    assert torch.equal(third, (a + 20) * 2 + 1)
    assert len(recordings) == 1 and recordings[0].replays == 2, "the recording call returns its warm-up run"
    run(torch.arange(6.0), torch.ones(6))  # another recorded size: a recording of its own
    assert len(recordings) == 2
    assert torch.equal(run(torch.arange(5.0), torch.ones(5)), torch.arange(5.0) * 2 + 101), "not a recorded size"
    assert len(recordings) == 2 and recordings[0].replays == 2


def test_graphed_runs_a_stateful_step_once_per_call_and_records_anew_for_each_key(fake_cuda_graphs):
    # A training step changes state: the call that records must not run it twice, and a number the
    # recording keeps (a learning rate) needs a recording per value; keep_one holds only the latest.
    total = torch.zeros(())

    def step(x):
        total.add_(x.sum())
        return total.clone()
    run = speed.graphed(step, sizes=(3,), keep_one=True)
    for key in (0.1, 0.1, 0.2, 0.1):
        run(torch.ones(3), key=key)
    assert total.item() == 12, "one step per call"
    assert len(fake_cuda_graphs) == 3, "0.1, 0.2, then 0.1 again: its recording was dropped for 0.2's"
    assert [g.replays for g in fake_cuda_graphs] == [1, 0, 0]


def test_a_cpu_evaluates_a_chunk_in_passes_of_128_that_give_the_one_pass_outputs():
    torch.manual_seed(0)
    model = resnet32(10).eval()
    sizes = []

    def net(x):
        sizes.append(len(x))
        return model(x)
    x = torch.randn(300, 3, 32, 32)
    with torch.no_grad():
        z, logits = speed.eval_forward(net, x)
        whole_z, whole_logits = model(x)
    assert sizes == [128, 128, 44]
    torch.testing.assert_close(z, whole_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, whole_logits, rtol=1e-5, atol=1e-5)
