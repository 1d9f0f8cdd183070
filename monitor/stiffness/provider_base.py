"""What every per-example gradient backend is built from: the model, the parameters selected,
the probe tensors on the device, the precision, and the objective (the loss, the attention
mask the model is called with, and where its output keeps the logits). One place, so backends
differ only in how they compute gradients."""

from __future__ import annotations

import torch
from torch import nn

from monitor.stiffness.outputs import Objective
from monitor.stiffness.parameters import ParameterSelection


class ProviderBase:
    """Holds a backend's inputs; subclasses add ``__call__(start, stop) -> GradientChunk``
    and, for work done once per evaluation, ``_prepare``."""

    def __init__(
        self,
        model: nn.Module,
        selection: ParameterSelection,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        device: torch.device,
        precision: str = "fp32",
        objective: Objective | None = None,
    ) -> None:
        self.model = model
        self.selection = selection
        self.inputs = inputs
        self.targets = targets
        self._device = device
        self.precision = precision
        self.objective = objective if objective is not None else Objective()
        self._prepare()

    def _batch(
        self, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs, targets (class indices, or token labels for a sequence loss) and attention
        mask (or None) of examples ``start`` to ``stop``, on the device."""
        return (
            self.inputs[start:stop].to(self.device),
            self.targets[start:stop].to(self.device),
            self.objective.mask(start, stop, self.device),
        )

    def _prepare(self) -> None:
        """Set up what every chunk reuses (called at the end of ``__init__``)."""

    @property
    def device(self) -> torch.device:
        return self._device
