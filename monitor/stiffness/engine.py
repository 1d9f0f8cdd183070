"""``compute_stiffness``: one model, one probe set, one frozen ``StiffnessResult``.

The engine is pure (DESIGN §1, STYLE): tensors in, a result out; no files, no printing, no
logging setup. It wires the pieces: parameter selection, a per-example gradient provider
(layer hooks first, ``torch.func`` vmap for what no layer rule covers, or one backward per
example for TorchScript and vmap-hostile models, chosen in ``monitor.stiffness.backends``),
and class mode or pair mode, which only ever see ``GradientChunk``s. An out-of-memory error in
a mode restarts that mode's pass with half the chunk (``_measure``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator

import torch
from torch import nn

from monitor.errors import EngineError
from monitor.stiffness.backends import gradient_provider
from monitor.stiffness.gradients import (
    ChunkStream,
    ExampleStats,
    memory_note,
    release_cached_memory,
)
from monitor.stiffness.inputs import EngineOptions, ProbeSet
from monitor.stiffness.layout import ProbeLayout
from monitor.stiffness.loss import labelled_examples
from monitor.stiffness.modes import ModeRunner, run_mode
from monitor.stiffness.outputs import DEFAULT_OUTPUT, LOSSES, Objective, OutputSpec
from monitor.stiffness.parameters import is_sharded, select_parameters
from monitor.stiffness.precision import tf32_only_for
from monitor.stiffness.projection import projected
from monitor.stiffness.result import Counts, StiffnessResult


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """eval() for the call, then every submodule's own training flag back (not just the root's:
    a trainer may keep e.g. a frozen BatchNorm in eval inside a training model)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def class_ordered(probe: ProbeSet) -> tuple[ProbeSet, torch.Tensor]:
    """The probe sorted by (split, class), stably, and the order used (new i = old order[i]).

    Class mode's per-chunk work is one weighted product per class present (hook backend):
    in probe order a chunk of 64 can hold every class; sorted, one or two.
    """
    # On the host: the probe may live on the device (the Evaluator moves it once).
    split = probe.is_train.cpu().long() if probe.has_splits and probe.is_train is not None else 0
    key = probe.targets.cpu() + (split * (int(probe.targets.max()) + 1) if probe.size else 0)
    order = torch.sort(key, stable=True).indices
    if torch.equal(order, torch.arange(probe.size)):
        return probe, order  # already sorted (the Evaluator keeps it so): no copy

    def pick(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values[order.to(values.device)]

    sorted_probe = dataclasses.replace(
        probe, inputs=probe.inputs[order], targets=probe.targets[order],
        is_train=pick(probe.is_train), token_targets=pick(probe.token_targets),
        attention_mask=pick(probe.attention_mask),
        source_indices=tuple(probe.source_indices[i] for i in order.tolist()),
    )  # fmt: skip
    return sorted_probe, order


def _widen_half_precision(model: nn.Module) -> None:
    """float16/bfloat16 parameters and buffers to float32, in place (exact; other dtypes
    untouched). The engine computes in float32 or float64; a bf16 forward is
    ``precision: bf16`` (autocast), not bf16 weights."""
    half = (torch.float16, torch.bfloat16)
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.dtype in half:
                parameter.data = parameter.data.float()
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype in half:
                module._buffers[name] = buffer.float()


def chunk_size(provider: object, options: EngineOptions) -> int:
    """``batch_size``, lowered so that a chunk's working set fits ``memory_limit``.

    A provider that knows what one example costs a chunk (``example_bytes``: the hook
    backend measures captured activations, output gradients and the largest per-example
    weight gradient at setup) gets at most a quarter of the limit per chunk in class mode
    and pair mode alike (pair mode keeps half for its panel). Out-of-memory on CUDA still
    halves the chunk: in the provider, ``ChunkStream`` retries that chunk; anywhere else in
    a mode, ``_measure`` restarts the pass.
    """
    per_example = int(getattr(provider, "example_bytes", 0) or 0)
    if options.memory_limit is None or per_example <= 0:
        return options.batch_size
    return max(1, min(options.batch_size, options.memory_limit // 4 // per_example))


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean over ``mask``; None when empty or not finite (a NaN loss must not leak out)."""
    if not bool(mask.any()):
        return None
    value = float(values[mask].mean())
    return value if math.isfinite(value) else None


def compute_stiffness(
    model: nn.Module,
    probe: ProbeSet,
    options: EngineOptions = EngineOptions(),  # noqa: B008 (frozen, so a shared default is safe)
    device: torch.device | str = "cpu",
    loss: str | None = None,
    output: OutputSpec = DEFAULT_OUTPUT,
    runner: ModeRunner | None = None,
) -> StiffnessResult:
    """Gradient stiffness of ``model`` on ``probe`` (Fort et al. 2019, DESIGN §2-3).

    The model is moved to ``device`` in place (``model.to``; it stays there; float16 and
    bfloat16 weights are widened to float32 in place) and evaluated
    in eval mode; every module's training flag is restored afterwards. Floating-point
    inputs are cast to the parameters' dtype: float64 models are computed in float64,
    everything else in float32 (``bf16`` runs the forward under autocast, gradients in
    float32). Per-example losses are the data loss, no regulariser: ``loss`` (by default
    ``options.loss``) is ``cross_entropy`` on (B, C) logits at the class ``targets``, or
    ``causal_lm``/``token_cross_entropy``, the mean token cross-entropy over each sequence's
    labelled positions of ``probe.token_targets`` (``loss.sequence_cross_entropy``); the
    class ``targets`` then only group examples. A sequence with no labelled position has no
    gradient: it is counted in ``counts.zero_gradient`` and left out of the probe loss and
    accuracy (the token accuracy, for sequences). ``output`` says where the model's output
    keeps its logits, class or token logits alike (a tensor, a dict's or ``ModelOutput``'s
    ``logits``, a tuple's first element by default; see ``outputs.OutputSpec``).

    ``runner`` replaces the one-process pass of the mode (``run_mode``); everything around
    it (the provider, the chunking and out-of-memory retries, the result) stays the same.

    Raises ``ValueError`` for an unsupported loss and ``EngineError`` when the model does
    not fit the probe (output shape, targets, no selected parameter, out of memory).
    """
    loss = options.loss if loss is None else loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if probe.size == 0:
        raise EngineError("the probe set is empty")
    objective = Objective(loss, probe.attention_mask, output)
    _check_sequences(probe, objective)
    device = torch.device(device)
    try:
        return _measure(model, probe, options, device, objective, runner or run_mode)
    except torch.cuda.OutOfMemoryError as error:  # moving the model or probe, the setup check
        raise EngineError(
            f"out of memory preparing the evaluation ({memory_note(device)}): the model, the "
            "probe and two examples' gradients must fit; select fewer parameters or use a "
            "larger device"
        ) from error


def _check_sequences(probe: ProbeSet, objective: Objective) -> None:
    """A sequence loss needs token labels; token labels and the mask must line up."""
    if not objective.sequence:
        return
    if probe.token_targets is None:
        raise EngineError(
            f"stiffness.loss {objective.loss} needs per-token labels: the probe has no "
            "'token_targets' (N, T)"
        )
    mask = probe.attention_mask
    if mask is not None and mask.shape != probe.token_targets.shape:
        raise EngineError(
            f"the probe's attention_mask {tuple(mask.shape)} and token_targets "
            f"{tuple(probe.token_targets.shape)} differ in shape"
        )


def _measure(
    model: nn.Module,
    probe: ProbeSet,
    options: EngineOptions,
    device: torch.device,
    objective: Objective,
    runner: ModeRunner,
) -> StiffnessResult:
    """``compute_stiffness`` once its arguments are checked."""
    started = time.perf_counter()
    original = probe
    if options.mode == "class":  # class-ordered: a chunk touches one or two class sums
        probe, order = class_ordered(probe)
    layout = ProbeLayout.from_probe(probe)
    with _eval_mode(model), tf32_only_for(options.precision):
        if not is_sharded(model):  # FSDP2 placed its shards; moving them again fails
            model.to(device)
        _widen_half_precision(model)
        selection = select_parameters(model, options.include, options.exclude)
        inputs = probe.inputs
        if inputs.is_floating_point():
            inputs = inputs.to(selection.dtype)
        objective = dataclasses.replace(objective, attention_mask=probe.attention_mask)  # reordered
        targets = probe.token_targets if objective.sequence else probe.targets
        assert targets is not None  # _check_sequences
        provider = projected(selection, options.projection, gradient_provider(
            model, selection, inputs, targets, device, options.precision, options.backend,
            objective,
        ))  # fmt: skip
        batch = chunk_size(provider, options)
        spent = 0.0  # gradient seconds of attempts given up on out-of-memory
        while True:
            stream = ChunkStream(provider, batch, configured=options.batch_size)
            stats = ExampleStats(probe.size, options.min_grad_norm)
            try:
                part = runner(options, stream, layout, stats, probe.inputs)
            except torch.cuda.OutOfMemoryError as error:
                spent += stream.seconds
                if stream.batch_size <= 1:
                    cache = (
                        ", lower stiffness.memory_limit (pair mode caches half of it)"
                        if options.mode == "pair"
                        else ""
                    )
                    raise EngineError(
                        f"out of memory in {options.mode} mode even with batch size 1 "
                        f"(configured batch_size {options.batch_size}; {memory_note(device)}); "
                        f"select fewer parameters{cache} or use a larger device"
                    ) from error
                batch = stream.batch_size // 2
            else:
                break
            release_cached_memory(device)  # after the except block: its frames are gone
        if options.mode == "class":
            stats.restore_order(order)
            layout = ProbeLayout.from_probe(original)
    total = time.perf_counter() - started
    usable, held, train = stats.usable, layout.held_out, layout.train
    scored_held, scored_train = held, train  # what probe loss and accuracy average over
    if objective.sequence:  # a sequence with nothing labelled has no loss to average
        assert original.token_targets is not None
        labelled = labelled_examples(original.token_targets, objective.loss == "causal_lm")
        scored_held, scored_train = held & labelled.cpu(), train & labelled.cpu()
    return StiffnessResult(
        mode=options.mode,
        classes=layout.classes,
        probe_loss=_mean(stats.losses, scored_held),
        probe_accuracy=_mean(stats.correct, scored_held),
        cosine=part.cosine,
        sign=part.sign,
        counts=Counts(
            examples=probe.size,
            per_class=layout.per_class(),
            zero_gradient=int((~usable).sum()),
            train_examples=int(train.sum()),
            parameters=selection.numel,
        ),
        gradient_norms=stats.norm_values(),
        precision=options.precision,
        device=str(device),
        pair_sets=part.pair_sets,
        distance=part.distance,
        uncertainty=part.uncertainty,
        statistics=part.statistics,
        train_probe_loss=_mean(stats.losses, scored_train) if layout.has_splits else None,
        train_probe_accuracy=_mean(stats.correct, scored_train) if layout.has_splits else None,
        timings={
            "total": total,
            "gradients": spent + stream.seconds,
            "stiffness": max(0.0, total - spent - stream.seconds),
        },
    )
