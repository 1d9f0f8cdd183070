"""The loop gradient provider: one forward and one ``torch.autograd.grad`` per example.

Slow (N backward passes; DESIGN §3: 2.7 s on an H100 for an MLP where vmap takes 72 ms),
but it asks nothing of the model beyond ordinary autograd, so it is exact for every module
the ``torch.func`` backend cannot run: TorchScript modules (scripted or traced; the
stateless API refuses them), forwards with ``.item()`` or data-dependent shapes, and custom
``autograd.Function``s without vmap support. It differentiates the module's own parameters,
selected by name as ``select_parameters`` chose them, with ``autograd.grad``, so ``.grad``
fields are never touched and unselected parameters get no gradient.

Two things vmap would have refused are checked here instead, because the loop would
otherwise measure them silently and wrongly: a forward that is random in eval mode
(dropout forced on, noise injection: its gradients are noise) and a forward that writes to
the model's parameters or buffers (running statistics updated in eval mode, call counters:
each example would then see a different model).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch

from monitor.errors import EngineError
from monitor.stiffness.gradients import GradientChunk
from monitor.stiffness.provider_base import ProviderBase


class LoopGradients(ProviderBase):
    """Per-example gradients of the per-example loss (``objective``), one example at a time."""

    def _prepare(self) -> None:
        live = dict(self.model.named_parameters())
        self.params = [live[name] for name in self.selection.names]  # the module's own tensors
        sizes = [int(p.numel()) for p in self.params]
        starts = [0, *itertools.accumulate(sizes)]
        self.slices = [slice(a, a + n) for a, n in zip(starts, sizes, strict=False)]  # in rows
        self.state = [*live.values(), *(b for _, b in self.model.named_buffers())]

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _versions(self) -> list[int]:
        """Every parameter's and buffer's in-place write counter."""
        return [tensor._version for tensor in self.state]

    @contextlib.contextmanager
    def _read_only(self) -> Iterator[None]:
        """Raise EngineError if the forward writes to the model's parameters or buffers."""
        before = self._versions()
        yield
        changed = [
            i for i, (a, b) in enumerate(zip(before, self._versions(), strict=True)) if a != b
        ]
        if changed:
            names = [*dict(self.model.named_parameters()), *dict(self.model.named_buffers())]
            raise EngineError(
                "the model's forward writes to its own tensors in eval mode ("
                f"{', '.join(names[i] for i in changed[:4])}); stiffness needs a forward "
                "that is a pure function of the weights and one example"
            )

    def check_outputs(self) -> int:
        """Run two small forwards; raise EngineError unless they give the same logits and
        the targets fit them. The same input twice must give the same output: a forward that
        is random in eval mode has no fixed gradient to measure."""
        x, mask = self.inputs[:2].to(self.device), self.objective.mask(0, 2, self.device)
        try:
            with torch.no_grad(), self._autocast(), self._read_only():
                first = self.objective.call(self.model, x, mask)
                second = self.objective.call(self.model, x, mask)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as error:  # torch.jit.Error included
            raise EngineError(f"the model fails on probe inputs: {error}") from error
        outputs = self.objective.check(first, x.shape[0], self.targets)
        a, b = self.objective.logits(first).float(), self.objective.logits(second).float()
        if not torch.allclose(a, b, rtol=1e-3, atol=1e-5, equal_nan=True):
            raise EngineError(
                "the model's forward is random in eval mode (the same input gave different "
                "logits: dropout with training=True or injected noise?); its gradients would "
                "be noise, so stiffness cannot be measured"
            )
        return outputs

    def _example(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, row: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill ``row`` (P,) with one example's gradient; return its loss and correctness."""
        with self._autocast():
            output = self.objective.call(self.model, x, mask)
            losses, correct = self.objective.losses(output, y, row.dtype)  # (1,), (1,)
            loss = losses[0]
        if loss.requires_grad:  # else no selected parameter reaches the loss: zero gradient
            parts = torch.autograd.grad(loss, self.params, allow_unused=True)
            for part, where in zip(parts, self.slices, strict=True):
                if part is not None:  # None: the parameter is unused, its gradient zero
                    row[where] = part.reshape(-1)
        return loss.detach(), correct[0]

    def __call__(self, start: int, stop: int) -> GradientChunk:
        x, y, mask = self._batch(start, stop)
        rows = stop - start
        grads = x.new_zeros(rows, self.selection.numel, dtype=self.selection.dtype)  # (b, P)
        losses = x.new_empty(rows, dtype=torch.float64)  # on the device: no sync per example
        share = torch.float64 if self.objective.sequence else torch.bool  # token share, or hit
        correct = x.new_empty(rows, dtype=share)
        try:
            with torch.enable_grad(), self._read_only():
                for i in range(rows):
                    one = None if mask is None else mask[i : i + 1]
                    losses[i], correct[i] = self._example(x[i : i + 1], y[i : i + 1], one, grads[i])
        except torch.cuda.OutOfMemoryError:
            raise  # the chunk stream retries with a smaller chunk
        except RuntimeError as error:  # torch.jit.Error included
            raise EngineError(
                f"computing per-example gradients one example at a time failed: {error}"
            ) from error
        return GradientChunk(
            start=start, stop=stop, grads=grads, losses=losses.cpu(), correct=correct.cpu()
        )
