"""Opt-in speed settings: channels-last memory format, bf16 autocast, torch.compile and CUDA graphs.

Each is off by default; tests show that each computes what the plain path computes (within a stated
tolerance for bf16; CUDA graphs, which exist only on a GPU, with stand-in graphs on a CPU), so turning one
on is a speed choice, not a change of method.
"""
from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Callable, Collection, ContextManager, Hashable, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # config.py imports this module
    from .config import Stage1Config, Stage2Config

PRECISIONS = ("fp32", "bf16")
GRAPH_DEVICES = ("cuda",)  # device types whose work `graphed` records (CUDA graphs exist only there)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def autocast(device: torch.device, precision: str, cache: bool = True) -> ContextManager:
    """Returns the autocast context for `precision` ("bf16": bfloat16 autocast; "fp32": no autocast).

    `cache=False` for work recorded as a CUDA graph: the weights' cast copies must be made inside the
    recording, where every replay makes them again, not kept from outside it."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


# A CPU evaluates ResNet-32 fastest in small forward passes, whose activations stay in its caches: on a 2-core
# x86 machine 0.9 ms an image in passes of 128 images, 2.3 ms in passes of 1000
# (results/benchmarks/cpu_eval_rows.txt). A GPU wants the large ones eval_batch_size gives.
CPU_FORWARD_ROWS = 128


def eval_forward(net: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor) -> tuple[Tensor, Tensor]:
    """Returns net(x) for an evaluation chunk: in one pass on a GPU, in passes of CPU_FORWARD_ROWS rows on a CPU
    (eval mode computes every row on its own, so the parts give what one pass gives, up to float rounding)."""
    if x.device.type != "cpu" or len(x) <= CPU_FORWARD_ROWS:
        return net(x)
    parts = [net(part) for part in torch.split(x, CPU_FORWARD_ROWS)]
    return torch.cat([z for z, _ in parts]), torch.cat([logits for _, logits in parts])


def model_input(x: Tensor, channels_last: bool) -> Tensor:
    """Returns the batch in the memory format the model was prepared for."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare(model: nn.Module, cfg: Stage1Config | Stage2Config) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Sets the model's memory format and returns the callable to run it with: the model itself, or compiled
    for the stage's training batch size and evaluation chunk size (`cfg.compile`, see `compiled`).

    The compiled wrapper shares the model's parameters, so state dicts are still taken from `model`.
    A CUDA-graph replay overwrites the previous replay's outputs, so callers that keep outputs across calls
    copy them (`training.extract` does).
    """
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if not cfg.compile:
        return model
    return compiled(model, cfg.compile_mode, sizes=(cfg.batch_size, cfg.eval_batch_size))


def step_model(model: nn.Module, cfg: Stage1Config | Stage2Config) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Returns the model as `graph_step`'s recorded training step runs it: eager, or with `cfg.compile_step`
    compiled for the training batch size without CUDA graphs of its own. torch.compile's CUDA graphs cannot
    be recorded inside another graph, but its kernels can: the step's graph then replays inductor's fused
    kernels instead of the eager model's many small ones. The recording's warm-up run compiles it."""
    return compiled(model, "default", sizes=(cfg.batch_size,)) if cfg.compile_step else model


def compiled(fn: Callable, mode: str = "default", sizes: Optional[Collection[int]] = None) -> Callable:
    """Returns `fn` under torch.compile with static shapes: an epoch has a handful of batch sizes, and static
    graphs are the fast ones (with CUDA graphs, one recorded graph each).

    With `sizes`, only calls whose first argument has one of these batch sizes run compiled; the others (the
    short last batch of a pass, the last chunk of an evaluation) run `fn` eagerly. Each compiled size costs
    a compilation (tens of seconds on a GPU, more on a CPU) and a CUDA-graph recording, which a batch seen
    once an epoch never pays back. Sizes are told apart by the batch size alone: were an evaluation's last
    chunk exactly `batch_size` images, it would run compiled (one more graph, the same results).
    """
    # One graph per (batch size, train/eval, frozen classifier): a process that runs both stages, or a
    # benchmark, needs more than dynamo's default 8, after which it silently falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    fast = torch.compile(fn, mode=mode, dynamic=False)
    if sizes is None:
        return fast
    sizes = frozenset(sizes)

    def run(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return (fast if x.shape[0] in sizes else fn)(x, *args, **kwargs)
    return run


def graphed(fn: Callable[..., Tensor], sizes: Collection[int], eager: Optional[Callable[..., Tensor]] = None,
            keep_one: bool = False) -> Callable[..., Tensor]:
    """Returns `fn` replayed from CUDA graphs. A call whose first argument is a CUDA tensor with one of
    `sizes` rows replays a recording of `fn` (`record_graph`) made at the first call with the same argument
    shapes and `key`, on copies of its arguments; other calls run `eager`, a function computing the same as
    `fn` (default `fn` itself).

    A replay launches all of `fn`'s kernels at once instead of one by one, which is what a function of
    many ops on small tensors needs on a GPU. `fn` takes tensors (or None) and returns one tensor.
    Recordings are told apart by the arguments' shapes and dtypes and by the call's `key=` (anything
    hashable), which names what a recording keeps as it was when recorded besides the arguments' contents:
    Python numbers such as a learning rate. `fn` must not depend on autocast or grad mode. The call that
    records returns `fn`'s warm-up run on its arguments, so `fn` runs once per call even when it changes
    state (a training step); later calls return a copy, since the next replay overwrites the recorded
    output. `keep_one` drops the other recordings when one is made, giving their memory back: a training
    step's recording holds its activations and gradients, and is replayed for a whole epoch.
    """
    sizes = frozenset(sizes)
    eager = eager or fn
    recordings: dict[tuple, tuple[list[Optional[Tensor]], Tensor, torch.cuda.CUDAGraph]] = {}

    def run(*args: Optional[Tensor], key: Hashable = None) -> Tensor:
        x = args[0]
        if x.device.type not in GRAPH_DEVICES or x.shape[0] not in sizes:
            return eager(*args)
        name = (key, *(None if a is None else (a.shape, a.dtype) for a in args))
        if name not in recordings:
            if keep_one:
                recordings.clear()
            *recordings[name], first = record_graph(fn, args)
            return first
        inputs, output, graph = recordings[name]
        for static, a in zip(inputs, args):
            if static is not None:
                static.copy_(a)
        graph.replay()
        return output.clone()
    return run


def record_graph(fn: Callable[..., Tensor], args: tuple[Optional[Tensor], ...]
                 ) -> tuple[list[Optional[Tensor]], Tensor, torch.cuda.CUDAGraph, Tensor]:
    """Returns (input buffers, output, graph, warm-up result): `fn` run once on copies of `args` (CUDA
    tensors or None), then recorded as a CUDA graph on the same copies. Replaying the graph reruns `fn`'s
    kernels on whatever the input buffers then hold, into the same output; the recording itself runs
    nothing, so `fn` ran once, in the warm-up.

    `fn` must not sync with the host nor make tensors from host data after its warm-up run: a recording
    replays kernels only. Tensors `fn` reads besides its arguments (a model's weights) must outlive the graph.
    """
    device = args[0].device
    inputs = [None if a is None else a.clone() for a in args]
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        # The warm-up run makes cached tables, library handles and optimizer state outside the recording, on
        # the stream the recording uses (handles and workspaces are kept per stream).
        first = fn(*inputs)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a Ray trainable runs its loop in a thread of its own, and only that thread's CUDA
        # calls belong to the recording
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            output = fn(*inputs)
    main.wait_stream(side)
    # Made on the side stream, used on the main one: its memory must not be reused before that use is done.
    # (State the warm-up creates, such as the momentum buffers of an optimizer's first step, lives as long
    # as the optimizer; the loops read a loss back every epoch, so nothing is queued on it when it goes.)
    first.record_stream(main)
    return inputs, output, graph, first


def sgd(params: Any, lr: float, momentum: float, weight_decay: float, fused: bool) -> torch.optim.SGD:
    """Returns SGD with momentum and weight decay. `fused` computes each step's update in one fused kernel per
    device and dtype (PyTorch's fused SGD) instead of the several multi-tensor ops of its default: the same
    formula, fewer launches and less host time per step."""
    # None, not False, when unfused: an explicit False also turns off the multi-tensor default on a GPU.
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads a saved optimizer state (momentum buffers, learning rates) but keeps this run's choice of fused
    or not: a saved state brings its own, made by a run whose speed settings may have differed."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    # a copy: torch keeps the given momentum tensors where their device and dtype fit, and the steps update
    # them in place, which would change the caller's state
    optimizer.load_state_dict(copy.deepcopy(state))
    for group, was in zip(optimizer.param_groups, fused):
        group["fused"] = was
