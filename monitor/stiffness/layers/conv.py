"""Conv1d/2d/3d (stride, padding, dilation, groups, any padding mode).

Per example, the weight gradient is G_i = Σ_t b_it ⊗ patch_it (rows = output channels,
cols = input channels/groups × kernel), with T the output positions. Three ways to use it:

- **materialise** with the grouped-convolution weight-gradient trick: fold the batch into
  the channels (input (1, b·Cin, ...), output gradient (1, b·Cout, ...), groups b·g) and
  ask ``convolution_backward`` for the weight gradient: (b·Cout, Cin/g, k...) is every
  example's gradient, in one cuDNN/oneDNN call. No ``F.unfold`` (which loops over the
  batch on CUDA) and no (b, T, Cin·k) patch matrix. On the CPU, layers with few output
  positions or narrow inputs take strided-view patches and one ``bmm`` instead, for class
  sums too (``bmm_materialise``: oneDNN's grouped weight gradient was slower there).
- **class sums** Σ_i w_i G_i: the ordinary weight gradient of the selected examples with
  their output gradients scaled by w_i, again one ``convolution_backward``.
- **ghost** (groups = 1 only, chosen when T²(Cout + Cin·k) < T·Cout·Cin·k, i.e. the small
  late feature maps): patches from strided views (``Tensor.unfold`` per spatial dim, a view,
  then one copy), never ``F.unfold``.

Non-zero padding modes and ``padding="same"`` are applied to the captured input with
``F.pad`` exactly as the module does, so the convolution itself runs unpadded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness.layers.grouping import Groups
from monitor.stiffness.layers.registry import register
from monitor.stiffness.layers.uses import Dense, Factors, Outer, Use, zeroed

_ConvNd = nn.Conv1d | nn.Conv2d | nn.Conv3d


def _weight_grad(
    x: torch.Tensor, shape: tuple[int, ...], grad: torch.Tensor, conv: ConvWeight, groups: int
) -> torch.Tensor:
    """d(conv)/d(weight) for input ``x`` and output gradient ``grad`` (N-d, no bias)."""
    weight = grad.new_empty(1).expand(shape)
    result: torch.Tensor = torch.ops.aten.convolution_backward(
        grad, x, weight, None, conv.stride, conv.padding, conv.dilation,
        False, [0] * len(conv.stride), groups, (False, True, False),
    )[1]  # fmt: skip
    return result


class ConvWeight(Use):
    """A conv weight's per-example gradients from input ``x`` (b, Cin, ...) and ``grad``."""

    def __init__(
        self, module: Any, x: torch.Tensor, grad: torch.Tensor, padding: tuple[int, ...]
    ) -> None:
        self.x, self.grad = x, grad
        self.shape = tuple(int(s) for s in module.weight.shape)  # (Cout, Cin/g, k...)
        self.kernel = self.shape[2:]
        self.stride = tuple(module.stride)
        self.dilation = tuple(module.dilation)
        self.padding = padding or tuple(0 for _ in self.kernel)
        self.groups = int(module.groups)
        self.batch, self.rows = int(x.shape[0]), self.shape[0]
        self.cols = int(torch.Size(self.shape[1:]).numel())
        self.steps = int(torch.Size(grad.shape[2:]).numel())
        self.has_factors = self.groups == 1

    @property
    def bmm_materialise(self) -> bool:
        """On the CPU, oneDNN's grouped weight gradient is slow for few output positions:
        ResNet-18 width 16, b=64, 128->128 at 4x4 took 44 ms against 16 ms for patches and
        one bmm (64->128 at 8x8 stride 2: 17 against 2.6 ms; 3->16 stem: 7.3 against 3.9),
        while at T >= 64 with wide inputs the grouped call won (2.2 against 29 ms). CUDA
        keeps cuDNN's grouped call (not yet measured against the bmm there)."""
        small = self.steps <= 32 or self.cols <= 32
        return self.groups == 1 and self.x.device.type == "cpu" and small

    def materialise(self) -> torch.Tensor:
        if self.bmm_materialise:
            found = self.factors()
            assert found is not None  # groups == 1
            return Outer(found.left, found.right).materialise()  # (b, Cout·Cin·k...)
        b = self.batch
        x = self.x.reshape(1, -1, *self.x.shape[2:])  # (1, b·Cin, ...)
        grad = self.grad.reshape(1, -1, *self.grad.shape[2:])  # (1, b·Cout, ...)
        shape = (b * self.shape[0], *self.shape[1:])
        return _weight_grad(x, shape, grad, self, b * self.groups).reshape(b, -1)

    def weighted_sum(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        scale = weights.view(-1, *([1] * (self.grad.dim() - 1)))
        grad = self.grad[rows] * scale  # (k, Cout, ...)
        return _weight_grad(self.x[rows], self.shape, grad, self, self.groups).reshape(-1)

    def class_sums(self, groups: Groups) -> torch.Tensor:
        """All groups in one convolution_backward: examples padded to (m, count·C, ...)
        and one convolution group per (class, conv group); else the per-group loop. Where
        the CPU forms per-example gradients with a bmm, class sums take it too."""
        if self.bmm_materialise:
            found = self.factors()
            assert found is not None
            return Outer(found.left, found.right).class_sums(groups)
        if not groups.batched:
            return super().class_sums(groups)
        c, m = groups.count, groups.width
        x = groups.padded(self.x, slot_major=False, weighted=False)  # (m, c, Cin, ...)
        grad = groups.padded(self.grad, slot_major=False)  # (m, c, Cout, ...)
        x = x.reshape(m, -1, *self.x.shape[2:])  # (m, c·Cin, ...)
        grad = grad.reshape(m, -1, *self.grad.shape[2:])  # (m, c·Cout, ...)
        shape = (c * self.shape[0], *self.shape[1:])
        return _weight_grad(x, shape, grad, self, c * self.groups).reshape(c, -1)

    def factors(self) -> Factors | None:
        if self.groups != 1:
            return None
        patches = self.x
        if any(self.padding):
            patches = F.pad(patches, [p for p in reversed(self.padding) for _ in range(2)])
        for dim, (k, s, d) in enumerate(zip(self.kernel, self.stride, self.dilation, strict=True)):
            patches = patches.unfold(2 + dim, d * (k - 1) + 1, s)  # window appended last
        n = len(self.kernel)
        window = (slice(None),) * (2 + n) + tuple(slice(None, None, d) for d in self.dilation)
        patches = patches[window]  # (b, Cin, o..., k...)
        order = (0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
        right = patches.permute(order).reshape(self.batch, self.steps, self.cols)
        left = self.grad.reshape(self.batch, self.rows, self.steps).transpose(1, 2)
        return Outer(left, right).factors()

    def zero_rows(self, mask: torch.Tensor) -> None:
        self.x, self.grad = zeroed(self.x, mask), zeroed(self.grad, mask)


def _padded_input(module: Any, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input as the convolution sees it, and the padding still to apply in it."""
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), ()
    if isinstance(module.padding, str):  # "valid" pads nothing; "same" may pad unevenly
        return F.pad(x, module._reversed_padding_repeated_twice), ()
    return x, tuple(module.padding)


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(
    module: Any, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    x, padding = _padded_input(module, inputs[0].to(dtype))
    if x.dim() == len(module.kernel_size) + 1:  # an unbatched input: the engine batches
        raise ValueError("unbatched convolution input")
    g = grad.to(dtype)
    uses: dict[str, Use] = {"weight": ConvWeight(module, x, g, padding)}
    if module.bias is not None:
        uses["bias"] = Dense(g.reshape(g.shape[0], g.shape[1], -1).sum(dim=2))  # (b, Cout)
    return uses
