"""One forward and one backward per chunk, capturing each covered layer's A and B.

Forward hooks record every call of a covered module (a module called twice is two uses):
its positional inputs A, detached, and its output. One ``autograd.grad`` of the *summed*
per-example loss with respect to those outputs gives B, each example's gradient at the
layer output (summed, not averaged, so B_i is example i's own gradient; DESIGN §3). The
parameters' gradients are never asked for: backpropagation stops at the layer outputs, so
no ``.grad`` is touched and the weight half of the backward is never run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from monitor.stiffness.outputs import Objective


@dataclass(eq=False)
class Call:
    """One call of a hooked module: its inputs (detached), output, and later B; and the
    parameters it held while it ran (``params``: what the setup check differentiates. Under
    FSDP2 they are the gathered, whole tensors; afterwards the module holds its shards)."""

    module: nn.Module
    inputs: tuple[Any, ...]
    output: torch.Tensor
    grad: torch.Tensor | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(eq=False)
class Captured:
    """A chunk's calls with B filled in, and the per-example losses (b,) and correctness."""

    calls: list[Call]
    losses: torch.Tensor
    correct: torch.Tensor


@contextlib.contextmanager
def hooked(
    modules: list[nn.Module], copied: frozenset[nn.Module] = frozenset(), batch: int | None = None
) -> Iterator[list[Call]]:
    """Record every call of ``modules`` while inside; the hooks are removed on exit.

    A module in ``copied`` passes a copy of its output on: an in-place operation after it
    (``nn.ReLU(inplace=True)`` after BatchNorm) then changes the copy, and the gradient at
    the recorded output stays the one at the layer's output, not the one after that
    operation. It costs one activation copy, so only layers that need it get it.

    With ``batch``, a call whose output does not lead with the batch size is not recorded:
    it is shared by the examples (GPT-2's position embedding looks up (1, T) positions and
    broadcasts them), so its B is summed over them and no per-example gradient can be read
    from it. Its parameter then disagrees with autograd at setup and moves to the fallback."""
    calls: list[Call] = []
    held: dict[nn.Module, list[dict[str, torch.Tensor]]] = {}

    def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
        # After FSDP2's own pre-hook (it goes first): the module holds its gathered weights.
        params: dict[str, torch.Tensor] = {
            key: p for key, p in module._parameters.items() if p is not None
        }
        held.setdefault(module, []).append(params)

    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        params = held[module].pop() if held.get(module) else {}
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        if batch is None or (output.dim() > 0 and output.shape[0] == batch):
            inputs = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            calls.append(Call(module, inputs, output, params=params))
            if module in copied:
                return output.clone()
        return None

    handles = [module.register_forward_pre_hook(enter) for module in modules]
    handles += [module.register_forward_hook(record) for module in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def capture(
    model: nn.Module,
    modules: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype,
    autocast: contextlib.AbstractContextManager[Any],
    keep_graph: bool = False,
    copied: frozenset[nn.Module] = frozenset(),
    objective: Objective | None = None,
    mask: torch.Tensor | None = None,
) -> Captured:
    """Forward ``x`` (with attention ``mask`` when given) with hooks, then B for every call.
    With ``keep_graph`` the losses stay attached (the setup check differentiates them once
    more, example by example). ``objective`` is the loss (cross-entropy when None)."""
    objective = objective if objective is not None else Objective()
    with torch.enable_grad(), hooked(modules, copied, int(x.shape[0])) as calls:
        with autocast:
            output = objective.call(model, x, mask)
        losses, correct = objective.losses(output, y, dtype)  # (b,) per-example data loss
        if calls:
            grads = torch.autograd.grad(
                losses.sum(),
                [call.output for call in calls],
                retain_graph=keep_graph,
                allow_unused=True,
            )
            for call, grad in zip(calls, grads, strict=True):
                call.grad = torch.zeros_like(call.output) if grad is None else grad
        for call in calls:  # drop the graph unless asked to keep it
            if not keep_graph:
                call.output = call.output.detach()
    return Captured(
        calls=calls,
        losses=losses if keep_graph else losses.detach(),
        correct=correct,
    )
