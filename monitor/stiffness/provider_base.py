"""What every per-example gradient backend is built from: the model, the parameters selected,
the probe tensors on the device, the precision, and where the model's output keeps its logits.
One place, so backends differ only in how they compute gradients."""

from __future__ import annotations

import torch
from torch import nn

from monitor.stiffness.outputs import DEFAULT_OUTPUT, OutputSpec
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
        output: OutputSpec = DEFAULT_OUTPUT,
    ) -> None:
        self.model = model
        self.selection = selection
        self.inputs = inputs
        self.targets = targets
        self._device = device
        self.precision = precision
        self.output = output  # where the model's output keeps the logits
        self._prepare()

    def _prepare(self) -> None:
        """Set up what every chunk reuses (called at the end of ``__init__``)."""

    @property
    def device(self) -> torch.device:
        return self._device
