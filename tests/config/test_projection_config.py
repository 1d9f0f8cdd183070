"""``stiffness.projection``: null (exact) by default, ``{dim, seed}`` reaches the engine, and
bad values are config errors naming the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config.schema import load_config
from monitor.errors import ConfigError
from monitor.stiffness.inputs import (
    DEFAULT_PROJECTION_DIM,
    DEFAULT_PROJECTION_TOTAL_DIM,
    Projection,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_exact_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "probe: {path: p.pt}\n"))
    assert config.stiffness.projection is None
    assert config.stiffness.engine_options().projection is None


def test_round_trip(tmp_path: Path) -> None:
    text = "probe: {path: p.pt}\nstiffness: {projection: {dim: 256, seed: 9, kind: kronecker}}\n"
    config = load_config(write(tmp_path, text))
    assert config.stiffness.engine_options().projection == Projection(256, 9, "kronecker")
    dumped = config.stiffness.model_dump()["projection"]
    default_fold = DEFAULT_PROJECTION_TOTAL_DIM
    assert dumped == {"dim": 256, "seed": 9, "kind": "kronecker", "total_dim": default_fold}
    for value, total_dim in (("1000", 1000), ("null", None)):
        folded = f"probe: {{path: p.pt}}\nstiffness: {{projection: {{total_dim: {value}}}}}\n"
        config = load_config(write(tmp_path, folded))
        expected = Projection(DEFAULT_PROJECTION_DIM, 0, "tensor_sketch", total_dim)
        assert config.stiffness.engine_options().projection == expected
    empty = load_config(write(tmp_path, "probe: {path: p.pt}\nstiffness: {projection: {}}\n"))
    default = Projection(DEFAULT_PROJECTION_DIM, 0, "tensor_sketch", DEFAULT_PROJECTION_TOTAL_DIM)
    assert empty.stiffness.engine_options().projection == default


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{dim: 0}", "stiffness.projection.dim"),
        ("{dim: lots}", "stiffness.projection.dim"),
        ("{dim: 2.5}", "stiffness.projection.dim"),
        ("{dim: true}", "stiffness.projection.dim"),
        ("{seed: -1}", "stiffness.projection.seed"),
        ("{dims: 4}", "stiffness.projection.dims: unknown key"),
        ("{kind: sparse}", "stiffness.projection.kind"),
        ("{total_dim: 0}", "stiffness.projection.total_dim"),
        ("{total_dim: 1.5}", "stiffness.projection.total_dim"),
        ("{dim: null}", "stiffness.projection.dim"),
        ("256", "stiffness.projection"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, value: str, fragment: str) -> None:
    path = write(tmp_path, f"probe: {{path: p.pt}}\nstiffness: {{projection: {value}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = "\n".join(caught.value.problems)
    assert fragment in found and str(path) in found
