"""The training split's gradient statistics (gradient disparity, GSNR, opposing share and the
suspect labels) against the float64 reference (tests/reference.py: one backward per example,
a two-pass variance, loops over classmate pairs), in class and pair mode, on an MLP, a CNN
with BatchNorm and an Embedding/LayerNorm model; absent without a training split."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from monitor.stiffness import EngineOptions, ProbeSet, StiffnessResult, compute_stiffness
from monitor.stiffness.inputs import Projection
from monitor.stiffness.layout import ProbeLayout
from monitor.stiffness.statistics import SUSPECTS, training_halves
from tests.reference import reference_stiffness
from tests.stiffness.test_engine import ARCHITECTURES

NUMBERS = ("gradient_disparity", "gsnr", "gsnr_median", "opposing_share")
COUNTS = ("gsnr_parameters", "examples", "halves")
#: (architecture, parameter globs): the first conv alone has classmates that oppose.
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlp": ("mlp", ()),
    "cnn-batchnorm": ("cnn-batchnorm", ()),
    "embedding-layernorm": ("embedding-layernorm", ()),
    "cnn-first-conv": ("cnn-batchnorm", ("0.*",)),
}


def noisy_probe(inputs: torch.Tensor, double: bool = False) -> ProbeSet:
    """Every other example in the training split, 40% of those with a random label (the
    labels a trainer with noise used); source indices offset as a probe file's would be."""
    n = int(inputs.shape[0])
    generator = torch.Generator().manual_seed(5)
    clean = torch.arange(n) % 4
    is_train = torch.arange(n) % 2 == 0
    flip = is_train & (torch.rand(n, generator=generator) < 0.4)
    targets = torch.where(flip, torch.randint(0, 4, (n,), generator=generator), clean)
    if double and inputs.is_floating_point():
        inputs = inputs.double()
    return ProbeSet(inputs, targets, is_train, source_indices=tuple(range(100, 100 + n)))


@cache
def case(name: str) -> tuple[nn.Module, ProbeSet, tuple[str, ...], dict[str, Any]]:
    arch, include = CASES[name]
    model, inputs = ARCHITECTURES[arch]()
    probe = noisy_probe(inputs)
    statistics = reference_stiffness(model, probe, include=include).statistics
    assert statistics is not None
    return model, probe, include, statistics


def assert_statistics(result: StiffnessResult, want: dict[str, Any], tol: float) -> None:
    assert result.statistics is not None
    got = result.statistics.to_dict()
    for key in COUNTS:
        assert got[key] == want[key], key
    for key in NUMBERS:
        assert (got[key] is None) == (want[key] is None), key
        if want[key] is not None:
            assert abs(got[key] - want[key]) <= tol * max(1.0, abs(want[key])), key

    # Two examples that are each other's only classmate tie up to rounding: order by the
    # rounded cosine, then the index, as the engine breaks exact ties.
    def ranked(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(found, key=lambda s: (round(s["cosine"], 8), s["index"]))

    expected = ranked(want["suspect_labels"][:SUSPECTS])
    mine = ranked(got["suspect_labels"])
    assert [(s["index"], s["label"]) for s in mine] == [(s["index"], s["label"]) for s in expected]
    for a, b in zip(mine, expected, strict=True):
        assert abs(a["cosine"] - b["cosine"]) <= tol


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("name", list(CASES))
def test_float64_statistics_match_reference(name: str, mode: Any) -> None:
    model, probe, include, want = case(name)
    model64 = copy.deepcopy(model).double()
    probe64 = noisy_probe(probe.inputs, double=True)
    options = EngineOptions(mode=mode, batch_size=7, include=include, statistics=True)
    result = compute_stiffness(model64, probe64, options)
    assert_statistics(result, want, 1e-10)
    assert want["halves"] == [10, 10] and want["gsnr_parameters"] > 0
    if name == "cnn-first-conv":  # the case exists to exercise the suspect labels
        assert want["opposing_share"] > 0 and want["suspect_labels"]
    # The stored form reads back to the same values.
    again = StiffnessResult.from_dict(result.to_dict())
    assert again.statistics == result.statistics


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_fp32_statistics_close_to_float64_reference(mode: Any) -> None:
    model, probe, _, _ = case("cnn-first-conv")
    options = EngineOptions(mode=mode, batch_size=16, statistics=True)
    result = compute_stiffness(model, probe, options)
    assert result.statistics is not None
    full = reference_stiffness(model, probe).statistics
    assert full is not None
    for key in NUMBERS:
        if full[key] is not None:
            value = getattr(result.statistics, key)
            assert abs(value - full[key]) <= 1e-5 * max(1.0, abs(full[key])), key


def test_class_mode_shares_its_second_pass_with_the_jackknife() -> None:
    model, probe, include, want = case("cnn-first-conv")
    model64 = copy.deepcopy(model).double()
    probe64 = noisy_probe(probe.inputs, double=True)
    options = EngineOptions(
        mode="class", batch_size=9, include=include, uncertainty=True, statistics=True
    )
    with_errors = compute_stiffness(model64, probe64, options)
    assert_statistics(with_errors, want, 1e-10)
    plain = compute_stiffness(model64, probe64, EngineOptions(mode="pair", include=include))
    for key in ("within_class", "within_class_pooled"):
        assert with_errors.uncertainty[key] == pytest.approx(plain.uncertainty[key], rel=1e-9)


def test_a_class_split_in_two_opposing_halves_is_found() -> None:
    """logits = W x: an example's gradient is (p - e_y) ⊗ x, so a class-0 example at -v
    opposes its classmates at +v; it is the one suspect, with its source index and label."""
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    inputs = torch.tensor(
        [[1.0, 0.2, 0.0], [0.9, 0.1, 0.1], [1.1, 0.0, 0.2], [-1.0, -0.1, -0.1],
         [0.0, 1.0, 0.1], [0.1, 1.0, 0.0], [0.0, 0.1, 1.0], [0.1, 0.0, 1.0]]
    )  # fmt: skip
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    probe = ProbeSet(
        torch.cat([inputs, inputs]), torch.cat([targets, targets]),
        torch.arange(16) < 8, source_indices=tuple(range(16)),
    )  # fmt: skip
    for mode in ("class", "pair"):
        result = compute_stiffness(model, probe, EngineOptions(mode=mode, statistics=True))
        assert result.statistics is not None
        suspects = result.statistics.suspect_labels
        assert [(s.index, s.label) for s in suspects] == [(3, 0)]
        assert suspects[0].cosine < 0
        assert result.statistics.opposing_share == pytest.approx(1 / 8)


def test_absent_without_a_training_split_or_when_switched_off() -> None:
    model, probe, _, _ = case("mlp")
    held_only = ProbeSet(probe.inputs, probe.targets)
    all_train = ProbeSet(probe.inputs, probe.targets, torch.ones(probe.size, dtype=torch.bool))
    for mode in ("class", "pair"):
        for each in (held_only, all_train):
            result = compute_stiffness(model, each, EngineOptions(mode=mode, statistics=True))
            assert result.statistics is None
            assert result.to_dict()["statistics"] is None
        off = compute_stiffness(model, probe, EngineOptions(mode=mode))  # off by default
        assert off.statistics is None and off.to_dict()["statistics"] is None


def test_halves_follow_source_indices_not_probe_order() -> None:
    """The same training examples visited in another order fall into the same halves."""
    targets = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    is_train = torch.tensor([True, True, False, True, True, True, False, True, True, True])
    sources = tuple(range(50, 60))
    probe = ProbeSet(torch.zeros(10, 2), targets, is_train, source_indices=sources)
    half = training_halves(ProbeLayout.from_probe(probe), sources)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    shuffled = ProbeSet(
        torch.zeros(10, 2), targets[order], is_train[order],
        source_indices=tuple(sources[i] for i in order.tolist()),
    )  # fmt: skip
    again = training_halves(ProbeLayout.from_probe(shuffled), shuffled.source_indices)
    assert torch.equal(again, half[order])
    assert sorted((half[is_train] == 0).tolist()).count(True) == 4  # ⌊8/2⌋ in half A
    assert bool((half[~is_train] == -1).all())


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sequence_loss_statistics_match_reference(arch: str, mode: Any) -> None:
    """causal_lm on tiny GPT-2 and Llama (tests/stiffness/test_sequences.py's padded probe:
    a training split with an unlabelled one-token sequence, left out as a zero gradient)."""
    pytest.importorskip("transformers")
    from tests.stiffness.test_sequences import case as sequence_case

    model, probe, ref = sequence_case(arch, "causal_lm")
    assert ref.statistics is not None
    options = EngineOptions(mode=mode, batch_size=5, loss="causal_lm", statistics=True)
    result = compute_stiffness(copy.deepcopy(model).double(), probe, options)
    assert_statistics(result, ref.statistics, 1e-10)
    assert ref.statistics["halves"] in ([1, 2], [2, 1])  # example 9 has no direction


@pytest.mark.parametrize("backend", ["auto", "vmap"])
def test_blocked_pair_mode_counts_every_example_once(backend: str) -> None:
    """With a memory budget of one chunk pair mode recomputes chunks for later panels; the
    statistics' sums see each example once all the same (float64, against the reference)."""
    model, probe, include, want = case("cnn-first-conv")
    model64 = copy.deepcopy(model).double()
    probe64 = noisy_probe(probe.inputs, double=True)
    options = EngineOptions(
        mode="pair", batch_size=7, memory_limit=1, include=include, statistics=True,
        backend=backend,  # type: ignore[arg-type]
    )  # fmt: skip
    assert_statistics(compute_stiffness(model64, probe64, options), want, 1e-10)


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_dense_rows_in_class_mode(backend: str) -> None:
    """The (b, P) rows of torch.func and of the loop (class mode scales them in place after
    the tracker has seen them) give the reference's statistics too."""
    model, probe, include, want = case("cnn-first-conv")
    model64 = copy.deepcopy(model).double()
    probe64 = noisy_probe(probe.inputs, double=True)
    options = EngineOptions(
        mode="class", batch_size=6, include=include, statistics=True,
        backend=backend,  # type: ignore[arg-type]
    )  # fmt: skip
    assert_statistics(compute_stiffness(model64, probe64, options), want, 1e-10)


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_projection_keeps_disparity_and_opposing_share_but_reports_no_gsnr(mode: Any) -> None:
    """With ``stiffness.projection`` the rows are projected: disparity and the opposing share
    are estimated from them (exact when k covers every parameter, close at a small k); a
    projected coordinate's mean²/variance is not the per-parameter GSNR, so none is given."""
    model, probe, include, want = case("cnn-first-conv")
    model64 = copy.deepcopy(model).double()
    probe64 = noisy_probe(probe.inputs, double=True)

    def measured(projection: Projection) -> dict[str, Any]:
        options = EngineOptions(mode=mode, include=include, statistics=True, projection=projection)
        statistics = compute_stiffness(model64, probe64, options).statistics
        assert statistics is not None
        return statistics.to_dict()

    whole = measured(Projection(10**6))
    assert whole["gsnr"] is None and whole["gsnr_median"] is None
    assert whole["gsnr_parameters"] == 0
    assert whole["gradient_disparity"] == pytest.approx(want["gradient_disparity"], rel=1e-9)
    assert whole["opposing_share"] == pytest.approx(want["opposing_share"], rel=1e-9)
    assert whole["halves"] == want["halves"]
    small = [measured(Projection(8, seed))["gradient_disparity"] for seed in range(20)]
    assert len(set(small)) > 1  # it did project
    mean = sum(small) / len(small)  # |·|² is unbiased; |·| is close for a 20-seed mean
    assert mean == pytest.approx(want["gradient_disparity"], rel=0.2)
