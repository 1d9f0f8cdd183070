"""Probe loading against real files (torch.save, numpy.savez), real factories and sklearn digits.

Factories live in this module and are named by ``f"{__name__}:function"``: the name pytest
imported this file under, so the loader finds the already-imported module whatever pytest's
import mode. One test also imports a factory from a dotted package written to ``tmp_path``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from monitor.config.factory import import_callable
from monitor.config.schema import ProbeConfig
from monitor.errors import ProbeError
from monitor.probe.sampling import (
    ProbeWarning,
    RawProbe,
    load_probe,
    read_probe_source,
    sample_per_class,
)
from monitor.stiffness.inputs import ProbeSet

HERE = __name__


# --- data and factories ----------------------------------------------------------------------


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled 8x8 digits (1797 examples, about 180 per class), no network."""
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def small_split_data() -> dict[str, Any]:
    """40 examples, 4 classes, alternating train/val: 5 per class and split."""
    generator = torch.Generator().manual_seed(1)
    return {
        "inputs": torch.randn(40, 3, generator=generator),
        "targets": [i % 4 for i in range(40)],
        "split": ["train" if (i // 4) % 2 == 0 else "val" for i in range(40)],
    }


def make_digits(as_numpy: bool = False) -> tuple[Any, Any]:
    x, y = digits()
    return (x, y) if as_numpy else (torch.from_numpy(x), torch.from_numpy(y))


def make_split_tuple() -> tuple[torch.Tensor, list[int], torch.Tensor]:
    data = small_split_data()
    is_train = torch.tensor([s == "train" for s in data["split"]])
    return data["inputs"], data["targets"], is_train


def make_split_dict() -> dict[str, Any]:
    return small_split_data()


class DigitsDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Map-style, as a user's dataset class would be: one example per index."""

    def __init__(self, limit: int | None = None) -> None:
        x, y = digits()
        self.x, self.y = x[:limit], y[:limit]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[index]), int(self.y[index])


def make_dataset(limit: int | None = None) -> DigitsDataset:
    return DigitsDataset(limit)


class PairsOf:
    """A Dataset-like object whose items are given literally, for the bad-item cases."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def make_bad_items(kind: str) -> PairsOf:
    ok = (torch.zeros(3), 1)
    items: dict[str, list[Any]] = {
        "not_pair": [ok, torch.zeros(3)],
        "shape": [ok, (torch.zeros(4), 1)],
        "float_target": [ok, (torch.zeros(3), 1.5)],
        "one_hot": [ok, (torch.zeros(3), torch.tensor([0, 1]))],
        "empty": [],
    }
    return PairsOf(items[kind])


def make_failing() -> None:
    raise RuntimeError("data server is down")


def make_tensor() -> torch.Tensor:
    return torch.zeros(4, 2)


def make_four() -> tuple[int, int, int, int]:
    return (1, 2, 3, 4)


def make_number() -> int:
    return 7


NOT_CALLABLE = 3


def config(**fields: Any) -> ProbeConfig:
    return ProbeConfig(**fields)


def save_pt(path: Path, data: Any) -> Path:
    torch.save(data, path)
    return path


def per_group_counts(probe: ProbeSet) -> Counter[tuple[bool | None, int]]:
    splits = [None] * probe.size if probe.is_train is None else probe.is_train.tolist()
    return Counter(zip(splits, probe.targets.tolist(), strict=True))


# --- sampling --------------------------------------------------------------------------------


def test_digits_sample_is_stratified_sorted_and_traceable(tmp_path: Path) -> None:
    x, y = digits()
    path = save_pt(tmp_path / "digits.pt", {"inputs": torch.from_numpy(x), "targets": y.tolist()})

    probe = load_probe(config(path=path, per_class=50, seed=0))

    assert probe.size == 500
    assert probe.classes == tuple(range(10))
    assert per_group_counts(probe) == {(None, c): 50 for c in range(10)}
    order = list(zip(probe.targets.tolist(), probe.source_indices, strict=True))
    assert order == sorted(order)  # by class, then by source index
    assert len(set(probe.source_indices)) == 500
    index = torch.tensor(probe.source_indices)
    assert torch.equal(probe.inputs, torch.from_numpy(x)[index])
    assert torch.equal(probe.targets, torch.from_numpy(y)[index])
    assert probe.inputs.dtype == torch.float32 and probe.targets.dtype == torch.int64
    assert probe.is_train is None and probe.source == str(path)


def test_same_seed_same_examples_other_seed_other_examples(tmp_path: Path) -> None:
    x, y = digits()
    path = tmp_path / "digits.npz"
    np.savez(path, inputs=x, targets=y)

    first = load_probe(config(path=path, per_class=20, seed=7))
    again = load_probe(config(path=path, per_class=20, seed=7))
    other = load_probe(config(path=path, per_class=20, seed=8))

    assert first.source_indices == again.source_indices
    assert torch.equal(first.inputs, again.inputs)
    assert first.source_indices != other.source_indices
    assert per_group_counts(other) == per_group_counts(first)


def test_larger_per_class_extends_the_smaller_draw() -> None:
    raw = RawProbe.from_arrays(*make_digits(), source="digits")
    small = sample_per_class(raw, 10, seed=3)
    large = sample_per_class(raw, 30, seed=3)
    assert set(small.source_indices) < set(large.source_indices)


def test_classes_subset_keeps_each_class_draw() -> None:
    """A class's draw does not depend on which other classes are selected."""
    raw = RawProbe.from_arrays(*make_digits(), source="digits")
    full = sample_per_class(raw, 12, seed=0)
    subset = sample_per_class(raw, 12, seed=0, classes=[7, 2, 7])

    assert subset.classes == (2, 7)
    assert set(subset.targets.tolist()) == {2, 7}
    kept = [
        i for i, t in zip(full.source_indices, full.targets.tolist(), strict=True) if t in (2, 7)
    ]
    assert list(subset.source_indices) == kept


def test_small_classes_use_every_example_and_warn() -> None:
    targets = [0] * 30 + [1] * 4 + [2] * 12
    raw = RawProbe.from_arrays(torch.randn(46, 2), targets, source="tiny")
    with pytest.warns(ProbeWarning, match=r"tiny: fewer than 10 probe examples for class 1: 4"):
        probe = sample_per_class(raw, 20, seed=0)
    assert per_group_counts(probe) == {(None, 0): 20, (None, 1): 4, (None, 2): 12}
    assert [i for i in probe.source_indices if 30 <= i < 34] == [30, 31, 32, 33]


def test_per_class_below_ten_warns_for_every_class() -> None:
    raw = RawProbe.from_arrays(*make_digits(), source="digits")
    with pytest.warns(ProbeWarning, match=r"class 0: 5, class 1: 5.* and 2 more"):
        sample_per_class(raw, 5, seed=0)


def test_no_warning_at_ten_or_more_per_class() -> None:
    raw = RawProbe.from_arrays(*make_digits(), source="digits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample_per_class(raw, 10, seed=0).size == 100


def test_splits_are_sampled_per_class_and_split(tmp_path: Path) -> None:
    path = save_pt(tmp_path / "split.pt", small_split_data())
    with pytest.warns(ProbeWarning):  # 3 per class and split is below 10
        probe = load_probe(config(path=path, per_class=3, seed=0))

    assert probe.has_splits and probe.is_train is not None
    expected = {(s, c): 3 for s in (True, False) for c in range(4)}
    assert per_group_counts(probe) == expected
    # sorted by split (train first), class, source index
    keys = [
        (not t, c, i)
        for t, c, i in zip(
            probe.is_train.tolist(), probe.targets.tolist(), probe.source_indices, strict=True
        )
    ]
    assert keys == sorted(keys)
    split = small_split_data()["split"]
    assert [split[i] == "train" for i in probe.source_indices] == probe.is_train.tolist()


def test_split_present_in_only_one_part_is_kept() -> None:
    raw = RawProbe.from_arrays(
        torch.randn(20, 2), [i % 2 for i in range(20)], ["val"] * 20, source="s"
    )
    probe = sample_per_class(raw, 10, seed=0)
    assert probe.is_train is not None and not probe.has_splits and probe.size == 20


@st.composite
def labelled(draw: st.DrawFn) -> tuple[list[int], list[bool] | None]:
    """Random classes and splits, each (class, split) with 2 to 12 examples, shuffled."""
    classes = draw(st.sets(st.integers(0, 9), min_size=1, max_size=5))
    splits = draw(st.sampled_from([(None,), (True, False), (False,)]))
    pairs = [
        (c, s) for c in sorted(classes) for s in splits for _ in range(draw(st.integers(2, 12)))
    ]
    pairs = draw(st.permutations(pairs))
    is_train = None if splits == (None,) else [bool(s) for _, s in pairs]
    return [c for c, _ in pairs], is_train


@settings(max_examples=40, deadline=None)
@given(data=labelled(), per_class=st.integers(2, 8), seed=st.integers(0, 2**31))
def test_sample_property(
    data: tuple[list[int], list[bool] | None], per_class: int, seed: int
) -> None:
    """Any labels and splits: each group gets min(n, per_class), unique, sorted, traceable."""
    targets, is_train = data
    raw = RawProbe.from_arrays(torch.arange(len(targets)).float(), targets, is_train, source="h")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        probe = sample_per_class(raw, per_class, seed)

    splits = [None] * len(targets) if is_train is None else is_train
    available = Counter(zip(splits, targets, strict=True))
    assert per_group_counts(probe) == {key: min(n, per_class) for key, n in available.items()}
    assert probe.inputs.tolist() == [float(i) for i in probe.source_indices]
    chosen_train = [False] * probe.size if probe.is_train is None else probe.is_train.tolist()
    keys = [
        (not t, c, i)
        for t, c, i in zip(chosen_train, probe.targets.tolist(), probe.source_indices, strict=True)
    ]
    assert keys == sorted(keys) and len(set(probe.source_indices)) == probe.size


# --- sources ---------------------------------------------------------------------------------


def write_pt(tmp_path: Path) -> ProbeConfig:
    x, y = digits()
    return config(
        path=save_pt(tmp_path / "d.pt", {"inputs": torch.from_numpy(x), "targets": y.tolist()})
    )


def write_npz(tmp_path: Path) -> ProbeConfig:
    x, y = digits()
    np.savez(tmp_path / "d.npz", inputs=x, targets=y)
    return config(path=tmp_path / "d.npz")


def write_pth_upper(tmp_path: Path) -> ProbeConfig:
    x, y = digits()
    return config(
        path=save_pt(
            tmp_path / "D.PTH", {"inputs": torch.from_numpy(x), "targets": torch.from_numpy(y)}
        )
    )


def factory_tuple(tmp_path: Path) -> ProbeConfig:
    return config(factory=f"{HERE}:make_digits", kwargs={"as_numpy": True})


def factory_dataset(tmp_path: Path) -> ProbeConfig:
    return config(factory=f"{HERE}:make_dataset")


def factory_dotted_package(tmp_path: Path) -> ProbeConfig:
    package = tmp_path / "probepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text(
        "from sklearn.datasets import load_digits\n"
        "def build(dtype='float32'):\n"
        "    d = load_digits()\n"
        "    return {'inputs': d.data.astype(dtype), 'targets': d.target}\n"
    )
    return config(factory="probepkg.data:build", kwargs={"dtype": "float32"})


@pytest.mark.parametrize(
    "make_config",
    [write_pt, write_npz, write_pth_upper, factory_tuple, factory_dataset, factory_dotted_package],
    ids=["pt", "npz", "PTH", "factory-tuple", "factory-dataset", "factory-dotted-package"],
)
def test_every_source_gives_the_same_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_config: Callable[[Path], ProbeConfig]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = sample_per_class(RawProbe.from_arrays(*make_digits(), source="ref"), 15, seed=4)

    probe = load_probe(make_config(tmp_path).model_copy(update={"per_class": 15, "seed": 4}))

    assert probe.source_indices == reference.source_indices
    assert torch.equal(probe.inputs, reference.inputs)
    assert torch.equal(probe.targets, reference.targets)
    assert probe.inputs.dtype == torch.float32 and probe.targets.dtype == torch.int64


@pytest.mark.parametrize("factory", ["make_split_tuple", "make_split_dict"])
def test_factory_splits_as_bool_mask_or_strings(factory: str) -> None:
    raw = read_probe_source(config(factory=f"{HERE}:{factory}"))
    assert raw.is_train is not None
    assert raw.is_train.tolist() == [s == "train" for s in small_split_data()["split"]]
    assert raw.source == f"probe factory {HERE}:{factory}"


def test_npz_split_strings_and_integer_token_ids(tmp_path: Path) -> None:
    data = small_split_data()
    tokens = np.arange(40 * 6, dtype=np.int64).reshape(40, 6) % 1000
    np.savez(
        tmp_path / "t.npz",
        inputs=tokens,
        targets=np.array(data["targets"], dtype=np.uint8),
        split=np.array(data["split"]),
    )

    raw = read_probe_source(config(path=tmp_path / "t.npz"))

    assert raw.inputs.dtype == torch.int64 and raw.targets.dtype == torch.int64
    assert raw.is_train is not None and int(raw.is_train.sum()) == 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16, torch.int32])
def test_input_dtype_is_kept(tmp_path: Path, dtype: torch.dtype) -> None:
    path = save_pt(
        tmp_path / "p.pt",
        {
            "inputs": torch.ones(6, 2, dtype=dtype),
            "targets": torch.tensor([0, 1, 2] * 2, dtype=torch.int32),
            "is_train": torch.tensor([True] * 3 + [False] * 3),
        },
    )
    raw = read_probe_source(config(path=path))
    assert raw.inputs.dtype == dtype and raw.targets.dtype == torch.int64


def test_probe_factories_share_the_model_factory_resolver() -> None:
    def resolve(spec: str) -> Callable[..., Any]:
        return import_callable(spec, error=ProbeError, what="probe factory")

    assert resolve(f"{HERE}:make_number")() == 7
    with pytest.raises(
        ProbeError, match=r"probe factory 'no_such_pkg.mod:f': cannot import module"
    ):
        resolve("no_such_pkg.mod:f")
    with pytest.raises(ProbeError, match=r"has no attribute 'missing'"):
        resolve(f"{HERE}:missing")
    with pytest.raises(ProbeError, match=r"'NOT_CALLABLE' is not callable"):
        resolve(f"{HERE}:NOT_CALLABLE")


def test_per_class_below_two_is_a_programming_error() -> None:
    raw = RawProbe.from_arrays(torch.randn(4, 2), [0, 0, 1, 1], source="s")
    with pytest.raises(ValueError, match="per_class must be >= 2"):
        sample_per_class(raw, 1, seed=0)


# --- bad files -------------------------------------------------------------------------------


class Unsafe:
    """Not a tensor: torch.load(weights_only=True) must refuse to rebuild it."""


def good(**override: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"inputs": torch.randn(6, 2), "targets": [0, 1, 2, 0, 1, 2]}
    data.update(override)
    return {key: value for key, value in data.items() if value is not None}


def corrupt(name: str, content: bytes) -> Callable[[Path], Path]:
    def write(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(content)
        return tmp_path / name

    return write


def pt(data: Any, name: str = "probe.pt") -> Callable[[Path], Path]:
    return lambda tmp_path: save_pt(tmp_path / name, data)


def truncated_pt(tmp_path: Path) -> Path:
    path = save_pt(tmp_path / "probe.pt", good())
    path.write_bytes(path.read_bytes()[:200])
    return path


def npz(**arrays: Any) -> Callable[[Path], Path]:
    def write(tmp_path: Path) -> Path:
        np.savez(tmp_path / "probe.npz", **arrays)
        return tmp_path / "probe.npz"

    return write


def npy_named_npz(tmp_path: Path) -> Path:
    np.save(tmp_path / "probe.npy", np.zeros(3))
    return (tmp_path / "probe.npy").rename(tmp_path / "probe.npz")


def directory(tmp_path: Path) -> Path:
    (tmp_path / "probe.pt").mkdir()
    return tmp_path / "probe.pt"


NAN = torch.randn(6, 2)
NAN[4, 1] = float("nan")
INF = torch.randn(6, 2, dtype=torch.float16)
INF[2, 0] = float("inf")

BAD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", lambda tmp_path: tmp_path / "absent.pt", "probe file not found"),
    ("directory", directory, "expected a probe file, found a directory"),
    (
        "suffix",
        corrupt("probe.csv", b"1,2,3"),
        "unknown probe file suffix '.csv'; expected .pt, .pth, .npz",
    ),
    (
        "garbage-pt",
        corrupt("probe.pt", b"hello, not a torch file"),
        "cannot read it as a torch.save file",
    ),
    ("empty-pt", corrupt("probe.pt", b""), "truncated or corrupt"),
    ("truncated-pt", truncated_pt, "truncated or corrupt"),
    ("unsafe-pt", pt(good(inputs=Unsafe())), "weights_only=True) refused"),
    (
        "not-dict",
        pt([torch.zeros(2), [0, 1]]),
        "expected a dict with 'inputs' and 'targets', got list",
    ),
    (
        "garbage-npz",
        corrupt("probe.npz", b"hello, not an archive"),
        "cannot read it as an .npz archive",
    ),
    ("npy-as-npz", npy_named_npz, "got a single .npy array"),
    (
        "object-npz",
        npz(
            inputs=np.zeros((2, 2)),
            targets=np.array([0, 1]),
            split=np.array(["train", None], dtype=object),
        ),
        "array 'split' holds Python objects",
    ),
    (
        "no-inputs",
        pt({"x": torch.zeros(2), "targets": [0, 1]}),
        (
            "missing 'inputs'; expected keys 'inputs', 'targets' and optionally 'split' or "
            "'is_train', found ['targets', 'x']"
        ),
    ),
    (
        "no-targets",
        npz(inputs=np.zeros((2, 2)), labels=np.array([0, 1])),
        (
            "missing 'targets'; expected keys 'inputs', 'targets' and optionally 'split' or "
            "'is_train', found ['inputs', 'labels']"
        ),
    ),
    (
        "split-and-is-train",
        pt(good(split=["val"] * 6, is_train=torch.zeros(6, dtype=torch.bool))),
        "found both 'split' and 'is_train'",
    ),
    (
        "inputs-list",
        pt(good(inputs=[[0.0, 1.0]] * 6)),
        "expected 'inputs' to be a tensor of shape (N, ...), got list (stack them",
    ),
    (
        "inputs-strings",
        npz(inputs=np.array(["a", "b"]), targets=np.array([0, 1])),
        "expected numeric 'inputs', got an array of dtype <U1",
    ),
    ("inputs-scalar", pt(good(inputs=torch.tensor(1.0))), "got a 0-d tensor"),
    (
        "float-targets",
        pt(good(targets=torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 2.0]))),
        (
            "expected 'targets' as integer class indices, got float32 (the values are whole "
            "numbers: save targets.long())"
        ),
    ),
    (
        "float-list-targets",
        pt(good(targets=[0.5, 1, 2, 0, 1, 2])),
        "integer class indices, got float32",
    ),
    (
        "float64-npz-targets",
        npz(inputs=np.zeros((2, 2)), targets=np.array([0.0, 1.0])),
        "integer class indices, got float64",
    ),
    (
        "bool-targets",
        pt(good(targets=torch.tensor([True, False] * 3))),
        "integer class indices, got bool",
    ),
    ("string-targets", pt(good(targets=["cat", "dog"] * 3)), "got a list of ['str']"),
    (
        "negative-targets",
        pt(good(targets=[0, 1, -1, 0, 1, -1])),
        ">= 0, got 2 negative (first: -1 at index 2)",
    ),
    (
        "one-hot-targets",
        pt(good(targets=torch.eye(3)[[0, 1, 2, 0, 1, 2]])),
        (
            "got shape (6, 3); these look like one-hot or probability targets: save "
            "targets.argmax(dim=1)"
        ),
    ),
    (
        "column-targets",
        pt(good(targets=torch.tensor([[0], [1], [2], [0], [1], [2]]))),
        "got shape (6, 1); save targets.squeeze(1)",
    ),
    (
        "length",
        pt(good(targets=[0, 1, 2, 0, 1])),
        "expected inputs, targets to have the same length, got inputs 6, targets 5",
    ),
    (
        "split-length",
        pt(good(split=["train", "val"] * 2)),
        "expected inputs, targets, split to have the same length, got inputs 6, targets 6, split 4",
    ),
    (
        "split-values",
        pt(good(split=["train", "test", "val", "validation", "val", "train"])),
        (
            "expected 'split' values 'train' or 'val', found 'test', 'validation' (2 examples, "
            "first at index 1)"
        ),
    ),
    (
        "split-npz-values",
        npz(inputs=np.zeros((2, 2)), targets=np.array([0, 1]), split=np.array(["train", "Val"])),
        "found 'Val'",
    ),
    (
        "is-train-ints",
        pt(good(is_train=torch.tensor([1, 0, 1, 0, 1, 0]))),
        "expected 'is_train' as a 1-D bool tensor, got int64",
    ),
    (
        "nan",
        pt(good(inputs=NAN)),
        "expected finite 'inputs', got NaN or inf in 1 examples (first at index 4)",
    ),
    ("inf-float16", pt(good(inputs=INF)), "NaN or inf in 1 examples (first at index 2)"),
    ("empty", pt(good(inputs=torch.zeros(0, 2), targets=[])), "expected at least one example"),
    (
        "one-example-class",
        pt(good(targets=[0, 0, 0, 1, 1, 2])),
        (
            "expected at least 2 examples of every class (within-class stiffness pairs distinct "
            "examples), got fewer for class 2: 1"
        ),
    ),
    (
        "one-example-class-in-split",
        pt(
            good(split=["train", "train", "train", "val", "val", "val"], targets=[0, 1, 0, 1, 0, 1])
        ),
        (
            "of every class in every split (within-class stiffness pairs distinct examples), got "
            "fewer for class 1 (train): 1, class 0 (val): 1"
        ),
    ),
]


@pytest.mark.parametrize(
    ("write", "problem"), [(w, p) for _, w, p in BAD_FILES], ids=[i for i, _, _ in BAD_FILES]
)
def test_bad_file_names_path_and_problem(
    tmp_path: Path, write: Callable[[Path], Path], problem: str
) -> None:
    path = write(tmp_path)
    with pytest.raises(ProbeError) as caught:
        load_probe(config(path=path, per_class=10))
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message


def test_classes_absent_from_probe_are_named(tmp_path: Path) -> None:
    path = save_pt(tmp_path / "probe.pt", good())
    with pytest.raises(ProbeError) as caught:
        load_probe(config(path=path, classes=[1, 5, 9]))
    assert (
        str(caught.value)
        == f"{path}: probe.classes lists 5, 9, absent from the probe (its classes are 0, 1, 2)"
    )


def test_empty_classes_list_is_an_error(tmp_path: Path) -> None:
    path = save_pt(tmp_path / "probe.pt", good())
    with pytest.raises(ProbeError, match=r"probe\.classes is empty"):
        load_probe(config(path=path, classes=[]))


def test_class_check_applies_after_the_classes_filter(tmp_path: Path) -> None:
    path = save_pt(tmp_path / "probe.pt", good(targets=[0, 0, 1, 1, 1, 2]))
    with pytest.warns(ProbeWarning):
        probe = load_probe(config(path=path, classes=[0, 1]))  # class 2 has one example, unused
    assert probe.classes == (0, 1) and probe.size == 5


# --- bad factories ---------------------------------------------------------------------------

BAD_FACTORIES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "no-module",
        "no_such_probe_module:make",
        {},
        "probe factory 'no_such_probe_module:make': cannot import module 'no_such_probe_module'",
    ),
    (
        "no-function",
        f"{HERE}:make_nothing",
        {},
        f"probe factory '{HERE}:make_nothing': module '{HERE}' has no attribute 'make_nothing'",
    ),
    (
        "raises",
        f"{HERE}:make_failing",
        {},
        (
            f"probe factory {HERE}:make_failing: calling it with {{}} raised RuntimeError: data "
            f"server is down"
        ),
    ),
    (
        "bad-kwargs",
        f"{HERE}:make_dataset",
        {"size": 3},
        "calling it with {'size': 3} raised TypeError",
    ),
    ("tensor", f"{HERE}:make_tensor", {}, "got a single Tensor"),
    ("four-tuple", f"{HERE}:make_four", {}, "got a tuple of 4"),
    (
        "number",
        f"{HERE}:make_number",
        {},
        (
            "expected (inputs, targets[, split]), a dict with 'inputs' and 'targets', or a Dataset "
            "(map-style: __len__ and __getitem__), got int"
        ),
    ),
    (
        "item-not-pair",
        f"{HERE}:make_bad_items",
        {"kind": "not_pair"},
        "dataset[1]: expected an (input, target) pair, got Tensor",
    ),
    (
        "item-shape",
        f"{HERE}:make_bad_items",
        {"kind": "shape"},
        "dataset[1]: expected every input to have shape (3,) (as dataset[0]), got (4,)",
    ),
    (
        "item-float-target",
        f"{HERE}:make_bad_items",
        {"kind": "float_target"},
        "expected 'targets' as integer class indices, got float32",
    ),
    (
        "item-one-hot",
        f"{HERE}:make_bad_items",
        {"kind": "one_hot"},
        (
            "dataset[1]: expected a scalar integer class index as target, got shape (2,); for "
            "one-hot targets use target.argmax()"
        ),
    ),
    ("empty-dataset", f"{HERE}:make_bad_items", {"kind": "empty"}, "the Dataset is empty"),
    (
        "too-few-digits",
        f"{HERE}:make_dataset",
        {"limit": 15},
        "got fewer for class 5: 1, class 6: 1, class 7: 1, class 8: 1, class 9: 1",
    ),
]


@pytest.mark.parametrize(
    ("spec", "kwargs", "problem"),
    [(s, k, p) for _, s, k, p in BAD_FACTORIES],
    ids=[i for i, *_ in BAD_FACTORIES],
)
def test_bad_factory_names_factory_and_problem(
    spec: str, kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ProbeError) as caught:
        load_probe(config(factory=spec, kwargs=kwargs))
    message = str(caught.value)
    assert spec in message
    assert problem in message


def test_unknown_keys_are_logged_so_a_misspelt_split_is_seen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = {**small_split_data(), "splits": small_split_data().pop("split")}
    del data["split"]
    path = save_pt(tmp_path / "probe.pt", data)
    raw = read_probe_source(config(path=path))
    assert raw.is_train is None
    assert f"{path}: ignoring keys ['splits']" in caplog.text
