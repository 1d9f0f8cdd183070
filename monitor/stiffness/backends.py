"""Which per-example gradient provider evaluates a model: vmap when it can, the loop when not.

Both providers are exact, so the choice changes speed, never results. The rule:

1. A TorchScript module (``torch.jit.ScriptModule``, scripted or traced: what TorchScript
   checkpoints load as) goes straight to ``LoopGradients``. ``functional_call`` refuses
   them ("The stateless API can't be used with Jitted modules"), so vmap never could.
2. Every other model starts on ``FuncGradients`` (vmap): measured 4-6× faster than the loop
   on small MLPs on two CPU cores, about 40× on an H100 (DESIGN §3: 72 ms against 2.7 s).
   (On the CPU a large MLP, P = 1.9M, was faster in the loop: vmap's (b, P) batching costs
   more there than N small backward passes. The rule still prefers vmap: it is the fast
   path on the GPUs the daemon runs on.)
3. When vmap fails on a chunk for any reason but memory (a ``VmapError``: ``.item()``,
   data-dependent shapes, an ``autograd.Function`` without vmap support, ...), the chunk is
   retried with the loop. If the loop computes it, the loop computes the rest of the
   evaluation too, and a warning names vmap's reason, since every evaluation will now be
   slower. If the loop fails as well, the model is genuinely unfit and the ``EngineError``
   gives both reasons: its forward fails under plain autograd, is random in eval mode, or
   writes to its own parameters or buffers (the last two are refused by the loop because
   it would otherwise measure them silently; vmap refuses them too).

Out-of-memory errors never switch providers: ``ChunkStream`` retries with a smaller chunk.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from monitor.errors import EngineError
from monitor.stiffness.func_backend import FuncGradients, VmapError
from monitor.stiffness.gradients import GradientChunk, GradientProvider
from monitor.stiffness.loop_backend import LoopGradients
from monitor.stiffness.parameters import ParameterSelection

logger = logging.getLogger(__name__)


class FallbackGradients:
    """``FuncGradients`` until vmap fails, then ``LoopGradients`` for good (see the rule)."""

    def __init__(self, primary: FuncGradients, fallback: LoopGradients) -> None:
        self.primary = primary
        self.fallback = fallback
        self.falling_back = False

    @property
    def device(self) -> torch.device:
        return self.primary.device

    def __call__(self, start: int, stop: int) -> GradientChunk:
        if self.falling_back:
            return self.fallback(start, stop)
        try:
            return self.primary(start, stop)
        except VmapError as vmap_error:
            try:
                self.fallback.check_outputs()
                chunk = self.fallback(start, stop)
            except EngineError as loop_error:
                raise EngineError(
                    f"{vmap_error} Computing them one example at a time failed too: {loop_error}"
                ) from loop_error
            reason = str(vmap_error.__cause__ or vmap_error).strip().split(". ")[0][:200]
            logger.warning(
                "torch.func cannot run this model (%s); computing per-example gradients one "
                "example at a time instead, which is much slower",
                reason,
            )
            self.falling_back = True
            return chunk


def _checked(model: nn.Module, provider: FuncGradients | LoopGradients) -> None:
    """``provider.check_outputs()``, with a ``torch.export`` program's shape guard explained.

    An exported program asserts the input shapes it was exported for; one exported with a
    fixed batch size refuses the engine's batches with a bare ``AssertionError``.
    """
    try:
        provider.check_outputs()
    except AssertionError as error:
        if not isinstance(model, torch.fx.GraphModule):
            raise
        raise EngineError(
            f"the exported program refuses the probe inputs ({error}); a torch.export program "
            "runs only on the input shapes it was exported for: export it with a dynamic "
            "batch dimension (dynamic_shapes) so that the engine can choose its batch size"
        ) from error


def gradient_provider(
    model: nn.Module,
    selection: ParameterSelection,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
) -> GradientProvider:
    """The provider for ``model`` by the rule above, its output already checked.

    Raises ``EngineError`` when one small forward does not give logits the targets fit.
    """
    loop = LoopGradients(model, selection, inputs, targets, device, precision)
    if isinstance(model, torch.jit.ScriptModule):
        _checked(model, loop)
        return loop
    primary = FuncGradients(model, selection, inputs, targets, device, precision)
    _checked(model, primary)
    return FallbackGradients(primary, loop)
