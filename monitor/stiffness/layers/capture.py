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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from monitor.stiffness.loss import cross_entropy
from monitor.stiffness.outputs import DEFAULT_OUTPUT, OutputSpec, extract_logits


@dataclass(eq=False)
class Call:
    """One call of a hooked module: its inputs (detached), output, and later B."""

    module: nn.Module
    inputs: tuple[Any, ...]
    output: torch.Tensor
    grad: torch.Tensor | None = None


@dataclass(eq=False)
class Captured:
    """A chunk's calls with B filled in, and the per-example losses (b,) and correctness."""

    calls: list[Call]
    losses: torch.Tensor
    correct: torch.Tensor


@contextlib.contextmanager
def hooked(
    modules: list[nn.Module], copied: frozenset[nn.Module] = frozenset()
) -> Iterator[list[Call]]:
    """Record every call of ``modules`` while inside; the hooks are removed on exit.

    A module in ``copied`` passes a copy of its output on: an in-place operation after it
    (``nn.ReLU(inplace=True)`` after BatchNorm) then changes the copy, and the gradient at
    the recorded output stays the one at the layer's output, not the one after that
    operation. It costs one activation copy, so only layers that need it get it."""
    calls: list[Call] = []

    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            inputs = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            calls.append(Call(module, inputs, output))
            if module in copied:
                return output.clone()
        return None

    handles = [module.register_forward_hook(record) for module in modules]
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
    output: OutputSpec = DEFAULT_OUTPUT,
) -> Captured:
    """Forward ``x`` with hooks, then B for every call. With ``keep_graph`` the losses stay
    attached (the setup check differentiates them once more, example by example)."""
    with torch.enable_grad(), hooked(modules, copied) as calls:
        with autocast:
            logits = extract_logits(model(x), output).to(dtype)  # (b, C)
        losses = cross_entropy(logits, y)  # (b,) per-example data loss
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
        correct=logits.argmax(dim=1) == y,
    )
