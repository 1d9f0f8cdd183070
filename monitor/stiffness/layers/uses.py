"""One use of one parameter in one chunk: its per-example gradients, in factored form.

A layer rule turns what the hooks captured for a call (input A, output gradient B of the
summed loss) into a ``Use`` per parameter. Every form answers the same four questions
without the engine knowing the layer (DESIGN §3):

- ``materialise()``: the per-example gradients, (b, numel): what pair mode caches when a
  layer's d·p is smaller than its ghost cost, and what norms use when T is large;
- ``weighted_sum(rows, weights)``: Σ_i w_i G_i over some examples, (numel,): one class sum
  of normalised gradients, a weight-gradient-sized product, never (b, numel);
- ``class_sums(groups)``: every class sum of a chunk at once, (count, numel), what class
  mode uses: one batched product where the form has one, else ``weighted_sum`` per class;
- ``factors()``: (L, R) with G_i = L_iᵀ R_i, or None: the "ghost" form, in which
  ⟨G_i, G_j⟩ = Σ_{t,s} (L_it·L_js)(R_it·R_js) costs T²(rows+cols) per pair.

``Dense`` holds gradients already materialised (biases, norm affines: cheap sums over
positions). ``Outer`` is the generic G_i = L_iᵀ R_i (Linear: L = B, R = A). ``Tokens`` is
an embedding's sparse one-hot L, kept as indices. Conv weights have their own form in
``conv.py``. All tensors are float32 (float64 for float64 models) on the compute device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.stiffness.layers.grouping import Groups


class Use:
    """Base of the forms; ``steps`` is T, the positions each example uses the weight at."""

    rows: int
    cols: int
    steps: int
    batch: int
    has_factors = False

    @property
    def ghost_width(self) -> int:
        """Multiply-adds per pair of positions in the ghost form: L_it·L_js plus R_it·R_js."""
        return self.rows + self.cols

    def materialise(self) -> torch.Tensor:
        raise NotImplementedError

    def weighted_sum(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def class_sums(self, groups: Groups) -> torch.Tensor:
        """(count, numel): Σ_{i in g} w_i G_i for every group g. The per-group loop here;
        the forms with a batched product override it."""
        return torch.stack([self.weighted_sum(r, w) for _, r, w in groups.members()])

    def factors(self) -> Factors | None:
        return None

    def zero_rows(self, mask: torch.Tensor) -> None:
        """Zero the rows in ``mask`` (b,) without writing to captured tensors (they may be
        views of the probe inputs)."""
        raise NotImplementedError


def zeroed(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with the examples in ``mask`` (b,) set to zero, as a new tensor."""
    keep = (~mask).to(values.device).view(-1, *([1] * (values.dim() - 1)))
    if not values.is_floating_point():
        return values
    return torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))


@dataclass(eq=False)
class Factors:
    """G_i = L_iᵀ R_i. ``left`` (b, T, rows) float, or (b, T) int64 row indices (one-hot L)."""

    left: torch.Tensor
    right: torch.Tensor  # (b, T, cols)
    rows: int

    @property
    def one_hot(self) -> bool:
        return not self.left.is_floating_point()


class Dense(Use):
    """Per-example gradients already formed: ``values`` (b, numel)."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        self.batch, self.rows = int(values.shape[0]), 1
        self.cols, self.steps = int(values.shape[1]), 1

    def materialise(self) -> torch.Tensor:
        return self.values

    def class_sums(self, groups: Groups) -> torch.Tensor:
        return groups.dense_sums(self.values)

    def weighted_sum(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return weights @ self.values[rows]  # (k,) @ (k, numel) -> (numel,)

    def zero_rows(self, mask: torch.Tensor) -> None:
        self.values = zeroed(self.values, mask)


class Outer(Use):
    """G_i = L_iᵀ R_i with dense L (b, T, rows) and R (b, T, cols)."""

    has_factors = True

    def __init__(self, left: torch.Tensor, right: torch.Tensor) -> None:
        self.left, self.right = left, right
        self.batch, self.steps, self.rows = (int(s) for s in left.shape)
        self.cols = int(right.shape[2])

    def materialise(self) -> torch.Tensor:
        # (b, rows, T) @ (b, T, cols) -> (b, rows, cols)
        return torch.bmm(self.left.transpose(1, 2), self.right).reshape(self.batch, -1)

    def weighted_sum(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        left = self.left[rows] * weights.view(-1, 1, 1)  # (k, T, rows)
        right = self.right[rows]  # (k, T, cols)
        # (rows, k·T) @ (k·T, cols) -> (rows, cols): one GEMM for the whole class
        return (left.reshape(-1, self.rows).T @ right.reshape(-1, self.cols)).reshape(-1)

    def class_sums(self, groups: Groups) -> torch.Tensor:
        if not groups.batched:
            return super().class_sums(groups)
        c, m = groups.count, groups.width
        left = groups.padded(self.left).view(c, m * self.steps, self.rows)
        right = groups.padded(self.right, weighted=False).view(c, m * self.steps, self.cols)
        # (c, rows, m·T) @ (c, m·T, cols) -> (c, rows, cols): one batched GEMM for all groups
        return torch.bmm(left.transpose(1, 2), right).reshape(c, -1)

    def factors(self) -> Factors:
        return Factors(self.left, self.right, self.rows)

    def zero_rows(self, mask: torch.Tensor) -> None:
        self.left = zeroed(self.left, mask)
        self.right = zeroed(self.right, mask)


class Tokens(Use):
    """An embedding's G_i = Σ_t onehot(index_it) ⊗ R_it: ``index`` (b, T), ``right`` (b, T, d)."""

    has_factors = True

    def __init__(self, index: torch.Tensor, right: torch.Tensor, rows: int) -> None:
        self.index, self.right = index, right
        self.batch, self.steps = (int(s) for s in index.shape)
        self.rows, self.cols = rows, int(right.shape[2])

    @property
    def ghost_width(self) -> int:
        return 1 + self.cols  # comparing two token ids, then R_it·R_js

    def materialise(self) -> torch.Tensor:
        out = self.right.new_zeros(self.batch * self.rows, self.cols)
        offsets = torch.arange(self.batch, device=self.index.device).unsqueeze(1) * self.rows
        out.index_add_(0, (self.index + offsets).reshape(-1), self.right.reshape(-1, self.cols))
        return out.view(self.batch, -1)  # (b, V·d)

    def weighted_sum(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.right.new_zeros(self.rows, self.cols)
        right = self.right[rows] * weights.view(-1, 1, 1)  # (k, T, d)
        out.index_add_(0, self.index[rows].reshape(-1), right.reshape(-1, self.cols))
        return out.reshape(-1)

    def class_sums(self, groups: Groups) -> torch.Tensor:
        """Every group's rows in one (count·V, d) scatter: group g's token t at g·V + t."""
        weights = groups.weights.view(-1, 1, 1).to(self.right.dtype)
        right = self.right[groups.rows] * weights  # (k, T, d)
        index = self.index[groups.rows] + groups.labels.unsqueeze(1) * self.rows  # (k, T)
        out = self.right.new_zeros(groups.count * self.rows, self.cols)
        out.index_add_(0, index.reshape(-1), right.reshape(-1, self.cols))
        return out.view(groups.count, -1)

    def factors(self) -> Factors:
        return Factors(self.index, self.right, self.rows)

    def zero_rows(self, mask: torch.Tensor) -> None:
        self.right = zeroed(self.right, mask)


def _left_similarity(x: Factors, y: Factors) -> torch.Tensor:
    """(b1·T1, b2·T2): L_x,it · L_y,js for every pair of positions."""
    if x.one_hot and y.one_hot:
        return (x.left.reshape(-1, 1) == y.left.reshape(1, -1)).to(x.right.dtype)
    if x.one_hot:
        return _left_similarity(y, x).T
    if y.one_hot:  # a dense L against a one-hot one: pick its columns
        return x.left.reshape(-1, x.rows)[:, y.left.reshape(-1)]
    return x.left.reshape(-1, x.rows) @ y.left.reshape(-1, y.rows).T


def ghost_cross(x: Factors, y: Factors, budget: int = 2**24) -> torch.Tensor:
    """⟨G_x,i, G_y,j⟩ for every i in x, j in y: (b1, b2), never forming G.

    Σ_{t,s} (L_it·L_js)(R_it·R_js), in row blocks of x so that the (rows·T1, b2·T2)
    similarity matrices stay within about ``budget`` elements.
    """
    b1, t1 = int(x.right.shape[0]), int(x.right.shape[1])
    b2, t2 = int(y.right.shape[0]), int(y.right.shape[1])
    out = x.right.new_empty(b1, b2)
    step = max(1, budget // max(1, t1 * b2 * t2))
    right_y = y.right.reshape(-1, y.right.shape[2])  # (b2·T2, cols)
    for begin in range(0, b1, step):
        part = Factors(x.left[begin : begin + step], x.right[begin : begin + step], x.rows)
        rows = int(part.right.shape[0])
        sim = _left_similarity(part, y)  # (k·T1, b2·T2)
        sim.mul_(part.right.reshape(-1, part.right.shape[2]) @ right_y.T)
        out[begin : begin + rows] = sim.view(rows, t1, b2, t2).sum(dim=(1, 3))
    return out


def ghost_self(x: Factors, y: Factors) -> torch.Tensor:
    """⟨G_x,i, G_y,i⟩ for each example i (two uses in the same chunk): (b,)."""
    if x.one_hot or y.one_hot:
        if x.one_hot and y.one_hot:
            left = (x.left.unsqueeze(2) == y.left.unsqueeze(1)).to(x.right.dtype)
        elif x.one_hot:  # (b, T1, T2): L_y,is at the token of x at t
            left = torch.gather(y.left, 2, x.left.unsqueeze(1).expand(-1, y.left.shape[1], -1))
            left = left.transpose(1, 2)
        else:
            left = torch.gather(x.left, 2, y.left.unsqueeze(1).expand(-1, x.left.shape[1], -1))
    else:
        left = torch.bmm(x.left, y.left.transpose(1, 2))  # (b, T1, T2)
    right = torch.bmm(x.right, y.right.transpose(1, 2))  # (b, T1, T2)
    return (left * right).sum(dim=(1, 2))
