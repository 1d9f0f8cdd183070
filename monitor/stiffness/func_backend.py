"""The generic per-example gradient provider: ``torch.func`` (vmap of grad).

It works for any eager model whose forward is a pure, batchable function of parameters,
buffers and one example, which is why it is the first backend and stays the fallback for
layers a faster hook-based backend does not cover (DESIGN §3). It materialises a chunk's
per-example gradients, (b, P), so its cost grows with P; the bookkeeping never depends on
that. TorchScript modules (``functional_call`` refuses them) and forwards vmap cannot run
(``.item()``, data-dependent shapes, autograd.Functions without vmap support) go to the
slower loop backend instead; ``monitor.stiffness.backends`` makes that choice.

The model must be in eval mode: BatchNorm then uses its running statistics (passed in as
constants through ``functional_call``), so examples do not interact and vmap is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from monitor.errors import EngineError
from monitor.stiffness.gradients import GradientChunk
from monitor.stiffness.provider_base import ProviderBase


class VmapError(EngineError):
    """``torch.func`` could not run the model (not out of memory): the forward is not a pure,
    batchable function of parameters and one example. ``__cause__`` holds torch's error;
    ``monitor.stiffness.backends`` decides whether the loop backend may take over."""


def _cast_to_parameters(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: run a BatchNorm in its parameters' dtype under bf16 autocast.

    vmap's batch_norm rule rejects a bf16 input with fp32 weights ("expected scalar type
    BFloat16 but found Float"); normalising in fp32 is also the more accurate choice.
    """
    tensors = [*module.parameters(), *module.buffers()]
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )


class FuncGradients(ProviderBase):
    """Per-example gradients of the per-example loss (``objective``), ``vmap(grad_and_value)``."""

    def _prepare(self) -> None:
        mask = None if self.objective.attention_mask is None else 0
        self._batched = vmap(
            grad_and_value(self._example_loss, has_aux=True), in_dims=(None, 0, 0, mask)
        )

    def _example_loss(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one example (vmap strips the batch dimension; put back a batch of one)."""
        kwargs = self.objective.kwargs(None if mask is None else mask.unsqueeze(0))
        output = functional_call(
            self.model, (params, self.selection.constants), (x.unsqueeze(0),), kwargs
        )
        losses, correct = self.objective.losses(output, y.unsqueeze(0), self.selection.dtype)
        return losses[0], correct[0]

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision != "bf16":
            yield
            return
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        handles = [m.register_forward_pre_hook(_cast_to_parameters) for m in norms]
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def check_outputs(self) -> int:
        """Run one small forward; raise EngineError unless it gives logits the targets fit.

        Done once up front so a wrong model fails with a message, not deep inside vmap.
        """
        x, mask = self.inputs[:2].to(self.device), self.objective.mask(0, 2, self.device)
        with torch.no_grad(), self._autocast():
            output = functional_call(
                self.model,
                (self.selection.params, self.selection.constants),
                (x,),
                self.objective.kwargs(mask),
            )
        return self.objective.check(output, x.shape[0], self.targets)

    def __call__(self, start: int, stop: int) -> GradientChunk:
        x, y, mask = self._batch(start, stop)
        try:
            with self._autocast():
                grads, (losses, correct) = self._batched(self.selection.params, x, y, mask)
        except torch.cuda.OutOfMemoryError:
            raise  # the chunk stream retries with a smaller chunk
        except RuntimeError as error:
            raise VmapError(
                f"torch.func could not compute per-example gradients: {error}. The model's "
                "forward must work under torch.func.vmap (no .item() or data-dependent "
                "control flow, no in-place updates of buffers)"
            ) from error
        rows = stop - start
        dtype = self.selection.dtype
        flat = torch.cat(  # (b, P), in selection order
            [grads.pop(name).reshape(rows, -1).to(dtype) for name in self.selection.names], dim=1
        )
        return GradientChunk(
            start=start,
            stop=stop,
            grads=flat,
            losses=losses.detach().to(torch.float64).cpu(),
            correct=correct.cpu(),
        )
