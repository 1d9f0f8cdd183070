"""What the engine takes in: the probe set and the options, as small immutable values.

Kept apart from the loaders so the engine stays pure (tensors in, result out) and the probe
loader, the CLI and the daemon can build these values without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Mode = Literal["class", "pair"]
Precision = Literal["fp32", "tf32", "bf16"]
Backend = Literal["auto", "hooks", "vmap", "loop"]
BACKENDS = ("auto", "hooks", "vmap", "loop")
Loss = Literal["cross_entropy", "causal_lm", "token_cross_entropy"]
LOSSES = ("cross_entropy", "causal_lm", "token_cross_entropy")
ProjectionKind = Literal["khatri_rao", "kronecker", "tensor_sketch"]
PROJECTION_KINDS = ("khatri_rao", "kronecker", "tensor_sketch")
#: Projected dimensions per parameter when a projection names none (docs/precision.md).
DEFAULT_PROJECTION_DIM = 4096
#: Values per projected row, the per-parameter rows folded together, when a projection names
#: no ``total_dim`` (docs/precision.md); None (``total_dim: null``) keeps them unfolded.
DEFAULT_PROJECTION_TOTAL_DIM = 2**17


@dataclass(frozen=True)
class Projection:
    """Projection mode (``monitor.stiffness.projection``): at most ``dim`` dimensions per
    selected parameter, drawn from ``seed``; ``kind`` is how outer-product (Linear, Conv,
    Embedding) gradients are projected: a TensorSketch (count sketch with hashed rows and
    columns, formed by FFT: the cheapest and, measured, the most accurate), row-wise
    Kronecker (Khatri-Rao, dense Gaussian rows, costly for wide layers) or LoGra's Kronecker
    P_out G P_inᵀ (cheap, but its error falls as k^(-1/4)). docs/precision.md compares them.
    ``total_dim`` folds the per-parameter rows into one row of at most that many values (a
    seeded count sketch), so memory is bounded by it whatever the number of parameter
    tensors; None keeps every parameter's rows apart."""

    dim: int = DEFAULT_PROJECTION_DIM
    seed: int = 0
    kind: ProjectionKind = "tensor_sketch"
    total_dim: int | None = DEFAULT_PROJECTION_TOTAL_DIM
    #: Fold even a row narrower than ``total_dim``: set by the parameter split, whose ranks
    #: each project a share of the parameters and must fold when the whole would.
    fold_always: bool = False

    def __post_init__(self) -> None:
        if (
            self.dim < 1
            or self.seed < 0
            or self.kind not in PROJECTION_KINDS
            or (self.total_dim is not None and self.total_dim < 1)
        ):
            raise ValueError(
                f"projection needs dim >= 1, seed >= 0, total_dim >= 1 or None and kind in "
                f"{PROJECTION_KINDS}, got {self}"
            )


@dataclass(frozen=True, eq=False)
class ProbeSet:
    """A fixed, labelled set of examples, identical at every checkpoint.

    ``inputs`` is (N, ...) (float features or integer token ids); ``targets`` is (N,) int64
    class indices into the model's output; ``is_train`` is (N,) bool, True for examples from
    the training probe (the "train" split), or None when every example is held out.
    ``classes`` are the distinct targets in ascending order: the row/column order of every
    class matrix. ``source_indices`` are the positions of the chosen examples in the source
    file, so a result can be traced back to its examples.

    For sequence losses (``causal_lm``, ``token_cross_entropy``) ``token_targets`` is (N, T)
    int64, Hugging Face's ``labels`` (same positions as the inputs, -100 where there is no
    loss), while ``targets`` stays each example's class, what within-class stiffness groups
    by. ``attention_mask`` (N, T), when given, is passed to the model as
    ``attention_mask=``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    is_train: torch.Tensor | None = None
    classes: tuple[int, ...] = ()
    source_indices: tuple[int, ...] = ()
    source: str = ""
    token_targets: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = int(self.targets.shape[0])
        if self.inputs.shape[0] != n:
            raise ValueError(f"inputs has {self.inputs.shape[0]} examples, targets {n}")
        if self.targets.dtype != torch.int64 or self.targets.dim() != 1:
            raise ValueError("targets must be a 1-D int64 tensor of class indices")
        if self.is_train is not None and (
            self.is_train.dtype != torch.bool or tuple(self.is_train.shape) != (n,)
        ):
            raise ValueError("is_train must be a (N,) bool tensor")
        tokens = self.token_targets
        if tokens is not None and (
            tokens.dtype != torch.int64 or tokens.dim() != 2 or tokens.shape[0] != n
        ):
            raise ValueError("token_targets must be a (N, T) int64 tensor of token labels")
        mask = self.attention_mask
        if mask is not None and (mask.dim() != 2 or mask.shape[0] != n):
            raise ValueError("attention_mask must be a (N, T) tensor")
        if not self.classes:
            object.__setattr__(
                self, "classes", tuple(int(c) for c in torch.unique(self.targets).tolist())
            )
        if not self.source_indices:
            object.__setattr__(self, "source_indices", tuple(range(n)))

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])

    @property
    def has_splits(self) -> bool:
        """True when the probe holds both training and held-out examples."""
        if self.is_train is None:
            return False
        n_train = int(self.is_train.sum())
        return 0 < n_train < self.size


@dataclass(frozen=True)
class EngineOptions:
    """How to compute stiffness. Mirrors the ``stiffness`` section of the config.

    ``include``/``exclude`` are glob patterns over parameter names (``fnmatch``); an empty
    ``include`` means every trainable parameter. ``min_grad_norm``: examples whose gradient
    norm is at or below it have no meaningful direction (the model already fits them); they
    are left out of every pair and counted in ``counts.zero_gradient``.
    ``memory_limit`` caps, in bytes, what the engine keeps alive for per-example gradients.
    ``uncertainty`` asks class mode for jackknife standard errors of the within-class values
    (one more pass over the probe); pair mode always gives them, they are free there.
    ``statistics`` asks for the training split's gradient statistics (disparity, GSNR,
    opposing share: ``monitor.stiffness.statistics``; class mode pays one more pass over the
    probe for the opposing share); without a training split there are none.
    ``loss`` is the per-example data loss: ``cross_entropy`` on (B, C) logits, or the
    sequence losses ``causal_lm`` and ``token_cross_entropy`` on (B, T, V) logits, which
    need the probe's ``token_targets``. ``projection`` (None: exact) computes stiffness
    from seeded random projections of the per-example gradients.
    """

    mode: Mode = "class"
    batch_size: int = 64
    precision: Precision = "fp32"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_grad_norm: float = 1e-10
    distance_bins: int = 20
    memory_limit: int | None = None
    uncertainty: bool = False
    backend: Backend = "auto"
    statistics: bool = False
    loss: Loss = "cross_entropy"
    projection: Projection | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("class", "pair"):
            raise ValueError(f"mode must be 'class' or 'pair', got {self.mode!r}")
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"precision must be fp32, tf32 or bf16, got {self.precision!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.min_grad_norm < 0:
            raise ValueError(f"min_grad_norm must be >= 0, got {self.min_grad_norm}")
        if self.distance_bins < 1:
            raise ValueError(f"distance_bins must be >= 1, got {self.distance_bins}")
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ValueError(f"memory_limit must be positive, got {self.memory_limit}")
