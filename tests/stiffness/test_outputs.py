"""Model outputs as people write them: a tensor, a dict or other mapping with ``logits``, a
``transformers`` ``ModelOutput``, a tuple, an object with ``.logits``, or a field or function
named in the config. Each shape is read right, every backend gives the same exact numbers
as the slow float64 reference, and a shape the engine cannot read is an error naming the
output's type and the keys it does have."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from monitor.config.factory import output_spec
from monitor.config.schema import parse_config
from monitor.errors import ConfigError, EngineError, ModelFactoryError
from monitor.stiffness import EngineOptions, OutputSpec, ProbeSet, compute_stiffness
from monitor.stiffness.outputs import extract_logits
from tests.reference import reference_stiffness

transformers = pytest.importorskip("transformers")
SequenceClassifierOutput = transformers.modeling_outputs.SequenceClassifierOutput
ModelOutput = transformers.utils.ModelOutput

N, CLASSES = 24, 3
LOGITS = torch.arange(6.0).reshape(2, 3)
HIDDEN = torch.ones(2, 5)


class Heads(NamedTuple):
    hidden: torch.Tensor
    scores: torch.Tensor


class Frozen(Mapping[str, Any]):
    """A read-only mapping that is not a dict (as some libraries return)."""

    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class WithLogits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def last_scores(output: Any) -> torch.Tensor:
    """An output_fn: the scores of a ``Heads`` tuple."""
    scores: torch.Tensor = output.scores
    return scores


AUTOMATIC: dict[str, Callable[[torch.Tensor], Any]] = {
    "tensor": lambda t: t,
    "dict": lambda t: {"loss": torch.tensor(1.0), "logits": t, "hidden": HIDDEN},
    "ordered-dict": lambda t: OrderedDict(hidden=HIDDEN, logits=t),
    "mapping": lambda t: Frozen(logits=t, hidden=HIDDEN),
    "model-output": lambda t: SequenceClassifierOutput(loss=torch.tensor(1.0), logits=t),
    "tuple": lambda t: (t, HIDDEN),
    "list": lambda t: [t, HIDDEN],
    "attribute": WithLogits,
}


@pytest.mark.parametrize("shape", list(AUTOMATIC))
def test_the_default_rule_finds_the_logits(shape: str) -> None:
    assert extract_logits(AUTOMATIC[shape](LOGITS)) is LOGITS


NAMED: list[tuple[str, OutputSpec, Any]] = [
    ("dict-key", OutputSpec(field="scores"), {"hidden": HIDDEN, "scores": LOGITS}),
    ("mapping-key", OutputSpec(field="scores"), Frozen(scores=LOGITS)),
    ("namedtuple-attribute", OutputSpec(field="scores"), Heads(HIDDEN, LOGITS)),
    ("tuple-index", OutputSpec(field=1), (HIDDEN, LOGITS)),
    ("negative-index", OutputSpec(field=-1), [HIDDEN, LOGITS]),
    (
        "model-output-index",
        OutputSpec(field=1),
        SequenceClassifierOutput(loss=torch.tensor(1.0), logits=LOGITS),
    ),
    ("model-output-key", OutputSpec(field="logits"), SequenceClassifierOutput(logits=LOGITS)),
    ("function", OutputSpec(function=last_scores), Heads(HIDDEN, LOGITS)),
]


@pytest.mark.parametrize(("name", "spec", "output"), NAMED, ids=[n for n, _, _ in NAMED])
def test_a_named_field_or_function_finds_the_logits(
    name: str, spec: OutputSpec, output: Any
) -> None:
    assert extract_logits(output, spec) is LOGITS


def test_a_dict_without_logits_is_an_error_naming_type_and_keys() -> None:
    with pytest.raises(EngineError) as caught:
        extract_logits({"loss": torch.tensor(1.0), "scores": LOGITS})
    message = str(caught.value)
    assert "model output of type dict holds no logits tensor" in message
    assert "keys 'loss', 'scores'" in message and "model.output" in message


@pytest.mark.parametrize(
    ("spec", "output", "expected"),
    [
        (
            OutputSpec(field="scores"),
            {"logits": LOGITS},
            "type dict has no 'scores' (it has keys 'logits')",
        ),
        (OutputSpec(field=2), (LOGITS, HIDDEN), "type tuple has no index 2 (it has 2 elements)"),
        (
            OutputSpec(field="scores"),
            WithLogits(LOGITS),
            "type WithLogits has no 'scores' (it has attributes logits)",
        ),
        (
            OutputSpec(field=1),
            SequenceClassifierOutput(logits=LOGITS),
            "SequenceClassifierOutput has no index 1 (it has keys 'logits')",
        ),
        (OutputSpec(), object(), "type object holds no logits tensor (it has no attributes)"),
        (OutputSpec(), (), "type tuple holds no logits tensor (it has 0 elements)"),
    ],
)
def test_a_field_the_output_lacks_is_an_error(spec: OutputSpec, output: Any, expected: str) -> None:
    with pytest.raises(EngineError, match="model output of") as caught:
        extract_logits(output, spec)
    assert expected in str(caught.value)


def test_a_failing_function_and_a_wrong_shape_are_errors() -> None:
    with pytest.raises(EngineError, match=r"model.output_fn last_scores failed .* type dict"):
        extract_logits({"logits": LOGITS}, OutputSpec(function=last_scores))
    with pytest.raises(EngineError, match=r"logits \(model.output 'hidden'\), got shape \(5,\)"):
        extract_logits({"hidden": HIDDEN[0]}, OutputSpec(field="hidden"))
    with pytest.raises(ValueError, match="not both"):
        OutputSpec(field="logits", function=last_scores)


class Shaped(nn.Module):
    """A small MLP whose forward wraps its logits in one of the shapes above."""

    def __init__(self, wrap: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, CLASSES))
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> Any:
        return self.wrap(self.body(x))


CASES: dict[str, tuple[Callable[[torch.Tensor], Any], OutputSpec]] = {
    "dict": (lambda t: {"logits": t, "hidden": t * 2}, OutputSpec()),
    "model-output": (lambda t: SequenceClassifierOutput(logits=t), OutputSpec()),
    "tuple": (lambda t: (t, t.sum()), OutputSpec()),
    "dict-field": (lambda t: {"hidden": t * 2, "scores": t}, OutputSpec(field="scores")),
    "function": (lambda t: Heads(t * 2, t), OutputSpec(function=last_scores)),
}


@pytest.mark.parametrize("backend", ["hooks", "vmap", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_shape_gives_the_reference_numbers(case: str, backend: Any) -> None:
    wrap, spec = CASES[case]
    torch.manual_seed(1)
    inputs = torch.randn(N, 5, dtype=torch.float64)
    probe = ProbeSet(inputs, torch.arange(N) % CLASSES)
    plain = Shaped(lambda t: t).double()
    want = reference_stiffness(plain, probe)
    model = Shaped(wrap).double()
    options = EngineOptions(mode="pair", batch_size=8, backend=backend)
    got = compute_stiffness(copy.deepcopy(model), probe, options, output=spec)
    for row_got, row_want in zip(got.cosine.matrix, want.cosine["val-val"].matrix, strict=True):
        assert row_got == pytest.approx(row_want, abs=1e-10)
    assert got.sign is not None
    for row_got, row_want in zip(got.sign.matrix, want.sign["val-val"].matrix, strict=True):
        assert row_got == pytest.approx(row_want, abs=1e-10)
    assert got.probe_loss == pytest.approx(want.probe_loss, rel=1e-10)
    assert [v for v in got.gradient_norms if v is not None] == pytest.approx(want.norms, rel=1e-9)


def test_the_engine_error_names_the_output_of_a_model_it_cannot_read() -> None:
    model = Shaped(lambda t: {"scores": t, "loss": t.sum()})
    probe = ProbeSet(torch.randn(N, 5), torch.arange(N) % CLASSES)
    with pytest.raises(EngineError, match=r"type dict holds no logits tensor .* 'scores', 'loss'"):
        compute_stiffness(model, probe)
    result = compute_stiffness(model, probe, output=OutputSpec(field="scores"))
    assert result.cosine.within is not None


def config_with(tmp_path: Path, **model: Any) -> Any:
    return parse_config({"model": model, "probe": {"path": "p.pt"}}, tmp_path / "config.yaml")


def test_the_config_keys_become_an_output_spec(tmp_path: Path) -> None:
    assert config_with(tmp_path, output="scores").model.output == "scores"
    assert config_with(tmp_path, output=1).model.output == 1
    assert output_spec("scores", None) == OutputSpec(field="scores")
    assert output_spec(None, None) == OutputSpec()
    spec = output_spec(None, "tests.stiffness.test_outputs:last_scores")
    assert spec.function is last_scores
    with pytest.raises(
        ModelFactoryError, match=r"model\.output_fn 'tests\.stiffness\.test_outputs:nope'"
    ):
        output_spec(None, "tests.stiffness.test_outputs:nope")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"output": "logits", "output_fn": "m:f"},
            "model: expected at most one of 'output' or 'output_fn', got both",
        ),
        ({"output": True}, "model.output: expected a key, attribute name or index, got True"),
        (
            {"output": ["logits"]},
            "model.output: expected a key, attribute name or index, got ['logits']",
        ),
        ({"output_fn": "not a function"}, "model.output_fn: expected"),
    ],
)
def test_bad_output_keys_are_config_errors(
    tmp_path: Path, model: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, **model)
    assert expected in str(caught.value), str(caught.value)
