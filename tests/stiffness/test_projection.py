"""Projection mode (``stiffness.projection``): seeded, unbiased, exact in the limit.

Real torch models (a small MLP with a bias-free layer, a tiny conv net, a tiny GPT-2 with
Conv1D and an embedding), the engine's own providers, and the exact engine (itself checked
against the float64 reference in test_engine.py) as what projection approximates.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness
from monitor.stiffness.backends import gradient_provider
from monitor.stiffness.gradients import dot64
from monitor.stiffness.inputs import PROJECTION_KINDS, Projection, ProjectionKind
from monitor.stiffness.layers.rows import FactoredRows
from monitor.stiffness.parameters import select_parameters
from monitor.stiffness.projection import ProjectedGradients, tensor_sketch
from monitor.stiffness.projection.matrices import Matrices, split
from monitor.stiffness.projection.projector import Projector

N, CLASSES = 24, 3


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(),
                         nn.Linear(16, CLASSES))  # fmt: skip


def probe() -> ProbeSet:
    torch.manual_seed(2)
    y = torch.arange(N) % CLASSES
    return ProbeSet(inputs=torch.randn(N, 10), targets=y, classes=tuple(range(CLASSES)))


def matrix_error(a: object, b: object) -> float:
    cells = [
        abs(x - y)
        for ra, rb in zip(a.cosine.matrix, b.cosine.matrix, strict=True)  # type: ignore[attr-defined]
        for x, y in zip(ra, rb, strict=True)
        if x is not None and y is not None
    ]
    return max(cells)


def exact_gram(model: nn.Module, data: ProbeSet, backend: str = "auto") -> torch.Tensor:
    selection = select_parameters(model, (), ())
    provider = gradient_provider(
        model, selection, data.inputs, data.targets, torch.device("cpu"), backend=backend
    )
    g = provider(0, N).grads
    return dot64(g, g)


def projected_gram(
    model: nn.Module,
    data: ProbeSet,
    dim: int,
    seed: int,
    backend: str = "auto",
    kind: ProjectionKind = "khatri_rao",
    total_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    selection = select_parameters(model, (), ())
    inner = gradient_provider(
        model, selection, data.inputs, data.targets, torch.device("cpu"), backend=backend
    )
    projection = Projection(dim, seed, kind, total_dim)
    rows = ProjectedGradients(inner, selection, projection)(0, N).grads
    assert isinstance(rows, torch.Tensor)
    return rows, dot64(rows, rows)


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_k_at_least_every_parameter_reproduces_exact(mode: str) -> None:
    model, data = mlp(), probe()
    exact = compute_stiffness(model, data, EngineOptions(mode=mode))
    same = compute_stiffness(model, data, EngineOptions(mode=mode, projection=Projection(10**6)))
    assert matrix_error(exact, same) < 1e-6
    if mode == "pair":
        assert exact.sign is not None and same.sign is not None
        assert exact.sign.matrix == same.sign.matrix


def test_kronecker_projection_is_the_dense_kronecker_product() -> None:
    """P_out G P_inᵀ from the factors equals (P_out ⊗ P_in) vec(G) of the formed gradient."""
    model, data = mlp(), probe()
    selection = select_parameters(model, (), ())
    hooks = gradient_provider(model, selection, data.inputs, data.targets, torch.device("cpu"))
    chunk = hooks(0, N)
    assert isinstance(chunk.grads, FactoredRows)
    wrapped = ProjectedGradients(hooks, selection, Projection(40, 3, "kronecker"))
    block = next(b for b in chunk.grads.blocks if b.name == "2.weight")  # (16, 24)
    got = wrapped.projector.block(block)
    k_out, k_in = split(16, 24, 40)
    assert (k_out, k_in) == (6, 6)
    p_out = wrapped.projector.matrices.factor("2.weight", 16, 24, k_out, "out")
    p_in = wrapped.projector.matrices.factor("2.weight", 16, 24, k_in, "in")
    assert p_out is not None and p_in is not None
    dense = block.transient_rows() @ torch.kron(p_out, p_in).T  # (b, 384) @ (384, 36)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)


def test_khatri_rao_projection_is_the_dense_row_wise_kronecker_product() -> None:
    """Coordinate j from the factors equals vec(G)·(a_j ⊗ b_j) of the formed gradient."""
    model, data = mlp(), probe()
    selection = select_parameters(model, (), ())
    hooks = gradient_provider(model, selection, data.inputs, data.targets, torch.device("cpu"))
    chunk = hooks(0, N)
    assert isinstance(chunk.grads, FactoredRows)
    wrapped = ProjectedGradients(hooks, selection, Projection(40, 3, "khatri_rao"))
    block = next(b for b in chunk.grads.blocks if b.name == "2.weight")  # (16, 24)
    got = wrapped.projector.block(block)
    a, b = wrapped.projector.matrices.rowwise("2.weight", (16, 24), 40)
    rows = torch.stack([torch.kron(a[j], b[j]) for j in range(40)])  # (40, 384)
    torch.testing.assert_close(got, block.transient_rows() @ rows.T, rtol=1e-5, atol=1e-6)
    assert float(rows.var()) == pytest.approx(1 / 40, rel=0.15)  # as a dense N(0, 1/k)


def test_tensor_sketch_is_the_count_sketch_of_the_formed_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the factors (by FFT) equals bucket (h_out(i) + h_in(j)) mod k, sign
    s_out(i)·s_in(j), summed entry by entry over the formed gradient; a sequence taken in
    slices of positions gives the same."""
    model, data = mlp(), probe()
    selection = select_parameters(model, (), ())
    hooks = gradient_provider(model, selection, data.inputs, data.targets, torch.device("cpu"))
    chunk = hooks(0, N)
    assert isinstance(chunk.grads, FactoredRows)
    wrapped = ProjectedGradients(hooks, selection, Projection(40, 3, "tensor_sketch"))
    block = next(b for b in chunk.grads.blocks if b.name == "2.weight")  # (16, 24)
    got = wrapped.projector.block(block)
    h = wrapped.projector.matrices.hashes("2.weight", (16, 24), 40)
    g = block.transient_rows().double().reshape(N, 16, 24)
    want = torch.zeros(N, 40, dtype=torch.float64)
    for i in range(16):
        for j in range(24):
            bucket = int(h.out_index[i] + h.in_index[j]) % 40
            want[:, bucket] += float(h.out_sign[i] * h.in_sign[j]) * g[:, i, j]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert set(h.out_sign.tolist()) == {-1.0, 1.0} and int(h.in_index.max()) < 40

    factors = block.factors[0]
    steps = torch.randn(N, 7, 24)  # a 7-position use, whole and in slices of 2 positions
    long = type(factors)(torch.randn(N, 7, 16), steps, 16)
    whole = wrapped.projector.outer("2.weight", long)
    monkeypatch.setattr(tensor_sketch, "SLICE_VALUES", 2 * N * 40)
    torch.testing.assert_close(wrapped.projector.outer("2.weight", long), whole)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_backends_agree_on_the_projection(kind: ProjectionKind) -> None:
    """The hook backend's factors and vmap's formed rows get the same projection."""
    model, data = mlp(), probe()
    hooks, _ = projected_gram(model, data, 40, 5, "hooks", kind)
    vmap, _ = projected_gram(model, data, 40, 5, "vmap", kind)
    torch.testing.assert_close(hooks, vmap, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_projected_inner_products_are_unbiased(kind: ProjectionKind) -> None:
    """Mean over S seeds of projected Gram entries within 5 standard errors of exact.

    Each entry's seeds are independent draws of an unbiased estimator, so (mean - exact)
    / (sd / √S) is about standard normal; over the N² entries a 5σ bound fails with
    probability < 1e-4 even unadjusted. The check has power: a bias of 10% of |exact|
    in the largest entries would exceed it."""
    model, data = mlp(), probe()
    exact = exact_gram(model, data)
    draws = torch.stack([projected_gram(model, data, 16, s, kind=kind)[1] for s in range(60)])
    mean, sd = draws.mean(0), draws.std(0)
    z = (mean - exact).abs() / (sd / math.sqrt(draws.shape[0]) + 1e-12)
    assert float(z.max()) < 5.0
    assert float(sd.max()) > 0  # it did project


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_error_shrinks_with_k(kind: ProjectionKind) -> None:
    model, data = mlp(), probe()
    exact = exact_gram(model, data)
    norms = exact.diagonal().sqrt()
    cos = exact / torch.outer(norms, norms)

    def error(dim: int) -> float:
        worst = []
        for seed in range(4):
            g = projected_gram(model, data, dim, seed, kind=kind)[1]
            n = g.diagonal().sqrt()
            worst.append(float((g / torch.outer(n, n) - cos).abs().mean()))
        return sum(worst) / len(worst)

    errors = [error(k) for k in (4, 16, 64, 256)]
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[3] < errors[0] / 3


def test_seeded_identical_across_evaluations_and_seeds_differ() -> None:
    model, data = mlp(), probe()
    options = EngineOptions(projection=Projection(16, 7))
    one = compute_stiffness(model, data, options)
    two = compute_stiffness(model, data, options)
    assert one.cosine.matrix == two.cosine.matrix
    other = compute_stiffness(model, data, EngineOptions(projection=Projection(16, 8)))
    assert other.cosine.matrix != one.cosine.matrix


def test_identical_across_processes() -> None:
    """A second process draws the same matrices and gives the same class matrix."""
    code = (
        "import json, torch\n"
        "from monitor.stiffness import EngineOptions, compute_stiffness\n"
        "from monitor.stiffness.inputs import Projection\n"
        "from monitor.stiffness.projection.matrices import Matrices\n"
        "from tests.stiffness.test_projection import mlp, probe\n"
        "m = Matrices(11, torch.device('cpu'), torch.float32)\n"
        "sums = [m.factor('layer.weight', 300, 200, 12, 'in').double().sum().item(),\n"
        "        m.dense('bias', torch.ones(1, 70000), 9).double().sum().item(),\n"
        "        m.hashes('layer.weight', (300, 200), 64).in_index.sum().item()]\n"
        "options = EngineOptions(projection=Projection(16, 7))\n"
        "result = compute_stiffness(mlp(), probe(), options)\n"
        "print(json.dumps({'sums': sums, 'matrix': result.cosine.matrix}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    there = json.loads(done.stdout.strip().splitlines()[-1])
    m = Matrices(11, torch.device("cpu"), torch.float32)
    factor = m.factor("layer.weight", 300, 200, 12, "in")
    assert factor is not None
    dense = m.dense("bias", torch.ones(1, 70000), 9)
    buckets = m.hashes("layer.weight", (300, 200), 64).in_index.sum().item()
    assert there["sums"] == [factor.double().sum().item(), dense.double().sum().item(), buckets]
    here = compute_stiffness(mlp(), probe(), EngineOptions(projection=Projection(16, 7)))
    assert [list(row) for row in here.cosine.matrix] == there["matrix"]


def test_conv_and_gpt2_layers_project_from_factors() -> None:
    """Conv (unfolded patches), Conv1D and Embedding (Tokens) rows: projection equals the
    same projection of the formed rows (vmap), and k >= every parameter is exact."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    data = ProbeSet(inputs=torch.randn(N, 2, 6, 6), targets=torch.arange(N) % 3,
                    classes=(0, 1, 2))  # fmt: skip
    for kind in PROJECTION_KINDS:
        hooks, _ = projected_gram(model, data, 20, 1, "hooks", kind)
        vmap, _ = projected_gram(model, data, 20, 1, "vmap", kind)
        torch.testing.assert_close(hooks, vmap, rtol=1e-4, atol=1e-6)
    torch.manual_seed(6)  # an embedding's one-hot rows, tokens repeated within a sequence
    embedded = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(5 * 8, 3))
    tokens = ProbeSet(inputs=torch.randint(0, 6, (N, 5)), targets=torch.arange(N) % 3,
                      classes=(0, 1, 2))  # fmt: skip
    for kind in PROJECTION_KINDS:
        hooks, _ = projected_gram(embedded, tokens, 16, 2, "hooks", kind)
        vmap, _ = projected_gram(embedded, tokens, 16, 2, "vmap", kind)
        torch.testing.assert_close(hooks, vmap, rtol=1e-4, atol=1e-6)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2))  # fmt: skip
    tokens = torch.randint(0, 20, (12, 6))
    seq = ProbeSet(inputs=tokens, targets=torch.arange(12) % 2, classes=(0, 1),
                   token_targets=tokens.clone())  # fmt: skip
    exact = compute_stiffness(gpt, seq, EngineOptions(loss="causal_lm", mode="pair"))
    same = compute_stiffness(
        gpt, seq, EngineOptions(loss="causal_lm", mode="pair", projection=Projection(10**5))
    )
    assert matrix_error(exact, same) < 1e-5
    near = compute_stiffness(
        gpt, seq, EngineOptions(loss="causal_lm", mode="class", projection=Projection(64, 2))
    )
    assert 0 < matrix_error(exact, near) < 0.5


@pytest.mark.parametrize("backend", ["hooks", "vmap"])
def test_fold_is_a_count_sketch_of_the_unfolded_row(backend: str) -> None:
    """``total_dim`` w: the folded row equals the unfolded (b, K) row times the dense (w, K)
    matrix with one ±1 per column at the fold's bucket, and is w wide."""
    model, data = mlp(), probe()
    unfolded, _ = projected_gram(model, data, 40, 3, backend, "tensor_sketch")
    folded, _ = projected_gram(model, data, 40, 3, backend, "tensor_sketch", total_dim=50)
    selection = select_parameters(model, (), ())
    shapes = selection.shapes
    projector = Projector(40, 3, shapes, torch.device("cpu"), torch.float32, total_dim=50)
    index = torch.cat([projector.fold_hashes(name).in_index for name in shapes])
    sign = torch.cat([projector.fold_hashes(name).in_sign for name in shapes])
    dense = torch.zeros(50, unfolded.shape[1])
    dense[index, torch.arange(unfolded.shape[1])] = sign
    assert folded.shape == (N, 50) and unfolded.shape[1] > 50
    torch.testing.assert_close(folded, unfolded @ dense.T, rtol=1e-5, atol=1e-6)
    assert len(set(index.tolist())) > 40  # the buckets spread over the width
    # A subset's fold (as one rank of the parameter split forms it) is its share of the
    # whole fold: the two halves' folded rows add up to the whole row.
    raw = gradient_provider(
        model, selection, data.inputs, data.targets, torch.device("cpu"), backend="vmap"
    )(0, N).grads
    assert isinstance(raw, torch.Tensor)
    sizes = [math.prod(shape) for shape in shapes.values()]
    columns = torch.arange(raw.shape[1]).split(sizes)
    summed = torch.zeros(N, 50)
    for half in (slice(0, 4), slice(4, None)):  # the second's K (43) < 50: fold_always
        names = list(shapes)[half]
        part = Projector(40, 3, {n: shapes[n] for n in names}, torch.device("cpu"),
                         torch.float32, total_dim=50, fold_always=True)  # fmt: skip
        summed += part.rows(raw[:, torch.cat(columns[half])])
    torch.testing.assert_close(summed, projector.rows(raw), rtol=1e-5, atol=1e-6)


def test_fold_wide_enough_is_no_fold_and_folded_is_unbiased() -> None:
    model, data = mlp(), probe()
    unfolded, _ = projected_gram(model, data, 16, 1, kind="tensor_sketch")
    same, _ = projected_gram(model, data, 16, 1, kind="tensor_sketch", total_dim=10**6)
    assert torch.equal(unfolded, same)
    exact = exact_gram(model, data)
    draws = torch.stack([
        projected_gram(model, data, 16, s, kind="tensor_sketch", total_dim=24)[1]
        for s in range(60)
    ])  # fmt: skip
    mean, sd = draws.mean(0), draws.std(0)
    z = (mean - exact).abs() / (sd / math.sqrt(draws.shape[0]) + 1e-12)
    assert float(z.max()) < 5.0 and float(sd.max()) > 0


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_folded_engine_bounds_the_row_and_stays_close(mode: str) -> None:
    """Class and pair mode through the engine: rows of total_dim values, and the class
    matrix error grows as the fold narrows (k = 400 keeps every tensor: K = P = 715)."""
    model, data = mlp(), probe()
    exact = compute_stiffness(model, data, EngineOptions(mode=mode))  # type: ignore[arg-type]

    def error(total_dim: int | None) -> float:
        worst = 0.0
        for seed in range(6):
            projection = Projection(400, seed, "tensor_sketch", total_dim)
            options = EngineOptions(mode=mode, projection=projection)  # type: ignore[arg-type]
            worst = max(worst, matrix_error(exact, compute_stiffness(model, data, options)))
        return worst

    assert error(None) == pytest.approx(0.0, abs=1e-5)
    wide, narrow = error(512), error(16)
    assert 0 < wide < narrow, (wide, narrow)


def test_bad_projection_options() -> None:
    with pytest.raises(ValueError, match="dim >= 1"):
        Projection(0)
    with pytest.raises(ValueError, match="seed >= 0"):
        Projection(4, -1)
    with pytest.raises(ValueError, match="kind in"):
        Projection(4, 0, "sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_dim >= 1"):
        Projection(4, 0, "tensor_sketch", 0)
