"""A chunk's examples split into class-mode slots, for class sums in one product per layer.

Class mode needs, per layer, S_a = Σ_{i in a} w_i G_i for every slot a present in the chunk
(DESIGN §3). One weighted product per slot costs a kernel launch and a small product each:
ResNet-18 at N=64 with 10 classes made 10 ``convolution_backward`` calls per conv layer.
Padding each slot to the largest slot's size m turns all of them into one batched product
(``torch.bmm`` over slots, a convolution with one group per slot), at the price of
count·m - k zero examples and a copy. ``Groups.batched`` says when that is worth it: at
least ``MIN_GROUPS`` slots (a class-ordered chunk of a large probe holds one or two, for
which the loop is as cheap) and at most ``MAX_PADDING`` times the examples' own work;
otherwise the per-slot loop does exactly k examples' work. On the CPU (2 cores, ResNet-18
width 16, b=64) one grouped ``convolution_backward`` for 100 classes took 13 ms against
29 ms for the loop, and for 10 classes 2.3-3.4 ms against 3.2-4.1 ms.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

MAX_PADDING = 2.0  # batched when count·m ≤ this × k
MIN_GROUPS = 3  # two products cost less than copying both slots into padded tensors


class Groups:
    """``rows`` (k,) local rows with ``weights`` (k,), split by ``slots`` (k,) into
    ``count`` groups; ``present`` (count,) is each group's slot, ``labels`` (k,) its group.

    The bookkeeping (which slots, how many each, where each example goes when padded) is
    done on the host from host ``rows`` and ``slots``, and its index tensors reach the
    weights' device in one copy: on CUDA, ``unique``, ``bincount`` and boolean masks each
    wait for the GPU, and a chunk would otherwise pay tens of such waits."""

    def __init__(self, rows: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor) -> None:
        device = weights.device
        host_rows, host_slots = rows.cpu(), slots.cpu()  # no wait when already on the host
        present, labels = torch.unique(host_slots, return_inverse=True)
        self.count = int(present.numel())
        self.sizes: list[int] = torch.bincount(labels, minlength=self.count).tolist()
        self.width = max(self.sizes, default=0)  # m: the largest group's size
        self.bounds = [0, *itertools.accumulate(self.sizes)]  # group g: bounds[g]:bounds[g+1]
        order = torch.sort(labels, stable=True).indices  # (k,) grouped, stable within groups
        sorted_labels = labels[order]
        position = (
            torch.arange(labels.numel())
            - torch.tensor(self.bounds[:-1], dtype=torch.long)[sorted_labels]
        )
        packed = torch.stack(
            [
                host_rows,
                labels,
                order,
                host_rows[order],
                sorted_labels * self.width + position,  # slot-major padded position
                position * self.count + sorted_labels,  # position-major padded position
            ]
        ).to(device)  # (6, k): one copy
        self.rows, self.labels, self.order, self.sorted_rows = (
            packed[0],
            packed[1],
            packed[2],
            packed[3],
        )
        self._where = {True: packed[4], False: packed[5]}
        self.present = present.to(device)
        self.weights = weights
        self.sorted_weights = weights[self.order]
        slots_present = present.tolist()
        contiguous = bool(slots_present) and slots_present[-1] - slots_present[0] == self.count - 1
        # The slots as one slice when they are consecutive (a class-ordered chunk's are):
        # class sums then add into a view, converting dtype in the same kernel.
        self.span = slice(slots_present[0], slots_present[-1] + 1) if contiguous else None

    @property
    def batched(self) -> bool:
        """One padded product beats the per-group loop (see the module docstring)."""
        k = int(self.rows.numel())
        return self.count >= MIN_GROUPS and self.count * self.width <= MAX_PADDING * k

    def dense_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Σ_{i in g} w_i values_i for every group g: (b, n) -> (count, n), one index_add_."""
        picked = values[self.rows] * self.weights.unsqueeze(1).to(values.dtype)  # (k, n)
        return picked.new_zeros(self.count, picked.shape[1]).index_add_(0, self.labels, picked)

    def members(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(label, rows, weights) for each group: the per-slot loop, slices of the grouped
        order (no mask, so no wait for the device)."""
        for label in range(self.count):
            part = slice(self.bounds[label], self.bounds[label + 1])
            yield label, self.sorted_rows[part], self.sorted_weights[part]

    def padded(
        self, values: torch.Tensor, slot_major: bool = True, weighted: bool = True
    ) -> torch.Tensor:
        """values[rows_i] (times w_i when ``weighted``) placed at (group, position), zeros
        elsewhere: (count, m, ...) when ``slot_major``, else (m, count, ...)."""
        picked = values[self.sorted_rows]  # (k, ...)
        if weighted:
            picked = picked * self.sorted_weights.view(-1, *([1] * (picked.dim() - 1)))
        out = picked.new_zeros(self.count * self.width, *picked.shape[1:])
        out[self._where[slot_major]] = picked
        shape = (self.count, self.width) if slot_major else (self.width, self.count)
        return out.view(*shape, *picked.shape[1:])
