"""Which per-example gradient provider evaluates a model: layer hooks, vmap, or the loop.

Every provider is exact, so the choice changes speed, never results. The rule:

0. With ``backend="auto"`` (or ``"hooks"``), an eager model whose selected parameters a
   layer rule covers (``monitor.stiffness.layers``: Linear, Conv, norms, Embedding) gets
   ``HookGradients``: one forward and one backward per chunk and no (b, P) matrix; the
   parameters no rule covers (or whose rule disagrees with autograd at setup) are computed
   by the provider rules 1-3 choose, for those parameters only. ``"vmap"`` and ``"loop"``
   skip the hooks (the benchmark's baseline; a model with side effects under hooks).

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

Out-of-memory errors never switch providers: the engine retries with a smaller chunk (out of
memory while setting up is an ``EngineError``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from monitor.errors import EngineError
from monitor.stiffness.func_backend import FuncGradients, VmapError
from monitor.stiffness.gradients import GradientChunk, GradientProvider
from monitor.stiffness.hooks_backend import HookGradients
from monitor.stiffness.loop_backend import LoopGradients
from monitor.stiffness.outputs import Objective
from monitor.stiffness.parameters import ParameterSelection, is_sharded
from monitor.stiffness.setup_cache import SETUP_CACHE, Structure, Verdict

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


def dense_provider(
    model: nn.Module,
    selection: ParameterSelection,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
    backend: str = "auto",
    checked: bool = False,
    objective: Objective | None = None,
) -> GradientProvider:
    """vmap with the loop behind it (rules 1-3), or the loop alone; output checked unless
    ``checked`` says a cached setup verdict already covers it."""
    loop = LoopGradients(model, selection, inputs, targets, device, precision, objective)
    if isinstance(model, torch.jit.ScriptModule) or backend == "loop":
        if not checked:
            _checked(model, loop)
        return loop
    primary = FuncGradients(model, selection, inputs, targets, device, precision, objective)
    if not checked:
        _checked(model, primary)
    return FallbackGradients(primary, loop)


def _hooks(
    model: nn.Module,
    selection: ParameterSelection,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
    objective: Objective,
) -> HookGradients | None:
    """The hook provider when rules cover at least one selected parameter (rule 0).

    The structural checks (logits that fit the targets, a deterministic forward that writes to
    none of the model's tensors, the fallback provider's output) run once per model structure
    (``setup_cache``). The comparison of every layer rule with autograd on two examples runs
    at every call: it depends on the weights (a use of a weight that the hooks cannot see,
    behind a gate that is zero at one checkpoint, contributes at the next), and it costs one
    small forward and two backward passes."""
    hooks = HookGradients(model, selection, inputs, targets, device, precision, objective)
    if not hooks.covered:
        return None
    structure = Structure(model, selection, inputs, targets, device, precision, objective)
    verdict = SETUP_CACHE.get(model, structure)
    if verdict is not None:
        hooks.apply(verdict.moved)
        named = dict(model.named_modules())
        hooks.copied = frozenset(named[name] for name in verdict.copied)
    else:
        # The loop's checks: logits the targets fit, a deterministic forward that writes to
        # none of the model's tensors (the hooks would otherwise measure it silently).
        loop = LoopGradients(model, selection, inputs, targets, device, precision, objective)
        loop.check_outputs()
    moved = hooks.check() if hooks.covered else []
    if moved:
        logger.info("no exact layer rule for %s; torch.func computes them", ", ".join(moved))
    if not hooks.covered:  # every rule disagreed: nothing worth caching
        return None
    if hooks.fallback_names and is_sharded(model):
        more = " ..." if len(hooks.fallback_names) > 4 else ""
        raise EngineError(
            "the model is sharded (FSDP2), and only layer rules (Linear, convolutions, norms, "
            "Embedding) can measure a sharded model; no rule covers "
            f"{', '.join(hooks.fallback_names[:4])}{more}"
            ": exclude them (stiffness.exclude) or split the examples or parameters instead"
        )
    if hooks.fallback_names:
        hooks.fallback = dense_provider(
            model, hooks.fallback_selection, inputs, targets, device, precision,
            checked=verdict is not None and not moved, objective=objective,
        )  # fmt: skip
    copied = tuple(name for name, m in model.named_modules() if m in hooks.copied)
    if verdict is None or moved or copied != verdict.copied:  # once every check has passed
        earlier = verdict.moved if verdict is not None else ()
        found = Verdict((*earlier, *moved), hooks.example_bytes, copied)
        SETUP_CACHE.put(model, structure, found if hooks.conclusive else None)
    return hooks


def gradient_provider(
    model: nn.Module,
    selection: ParameterSelection,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
    backend: str = "auto",
    objective: Objective | None = None,
) -> GradientProvider:
    """The provider for ``model`` by the rule above, its output already checked.
    ``objective`` is the loss, the attention mask and where the output keeps its logits
    (cross-entropy, no mask, the default reading, when None).

    Raises ``EngineError`` when one small forward does not give logits the targets fit, or
    when ``backend="hooks"`` is asked of a model no layer rule covers.
    """
    scripted = isinstance(model, torch.jit.ScriptModule)
    if is_sharded(model):
        backend = "hooks"  # nothing else can run it (``is_sharded``): its errors are final
    if backend in ("auto", "hooks") and not scripted:
        try:
            hooks = _hooks(
                model, selection, inputs, targets, device, precision, objective or Objective()
            )
        except torch.cuda.OutOfMemoryError:
            raise
        except (EngineError, RuntimeError):
            if backend == "hooks":
                raise
            hooks = None  # the dense providers give the precise reason, or cope
        if hooks is not None:
            return hooks
    if backend == "hooks":
        raise EngineError(
            "backend 'hooks' was asked for, but no layer rule covers a selected parameter "
            "of this model (or it is TorchScript); use backend 'auto'"
        )
    return dense_provider(
        model, selection, inputs, targets, device, precision, backend, objective=objective
    )
