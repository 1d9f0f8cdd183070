"""Sequence probes: ``token_targets`` and ``attention_mask`` read from real ``.pt`` and
``.npz`` files, checked with messages that name the file, key and problem, and sampled with
their rows (monitor/probe/tokens.py, raw.py, sources.py, sampling.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monitor.config.schema import ProbeConfig
from monitor.errors import ProbeError
from monitor.probe.sampling import load_probe

N, T = 24, 6
pytestmark = pytest.mark.filterwarnings("ignore::monitor.probe.sampling.ProbeWarning")


def fields() -> dict[str, Any]:
    """Right-padded token ids with lengths 2..6, labels -100 on the padding, 3 classes."""
    lengths = torch.arange(N) % 5 + 2
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    ids = (torch.arange(N * T).reshape(N, T) % 17 + 1) * mask
    return {
        "inputs": ids,
        "targets": torch.arange(N) % 3,
        "token_targets": ids.masked_fill(mask == 0, -100),
        "attention_mask": mask,
        "split": ["train" if i % 4 == 0 else "val" for i in range(N)],
    }


def write(tmp_path: Path, data: dict[str, Any], suffix: str = ".pt") -> Path:
    path = tmp_path / f"probe{suffix}"
    if suffix == ".pt":
        torch.save(data, path)
    else:
        arrays = {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)
                  for k, v in data.items()}  # fmt: skip
        np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_sampled_rows_keep_their_tokens_and_mask(tmp_path: Path, suffix: str) -> None:
    data = fields()
    probe = load_probe(ProbeConfig(path=write(tmp_path, data, suffix), per_class=3))
    assert probe.token_targets is not None and probe.attention_mask is not None
    assert probe.token_targets.dtype == probe.attention_mask.dtype == torch.int64
    rows = list(probe.source_indices)
    assert len(rows) == 15 and probe.has_splits  # train: 2 per class (all), val: 3 of 6
    assert torch.equal(probe.inputs, data["inputs"][rows])
    assert torch.equal(probe.token_targets, data["token_targets"][rows])
    assert torch.equal(probe.attention_mask, data["attention_mask"][rows])
    assert torch.equal(probe.targets, data["targets"][rows])


def test_mask_is_optional(tmp_path: Path) -> None:
    data = fields()
    del data["attention_mask"]
    probe = load_probe(ProbeConfig(path=write(tmp_path, data), per_class=4))
    assert probe.attention_mask is None and probe.token_targets is not None


def _bad(change: dict[str, Any]) -> dict[str, Any]:
    data = fields()
    data.update(change)
    return {k: v for k, v in data.items() if v is not None}


def _labelled_padding() -> torch.Tensor:
    labels = fields()["token_targets"].clone()
    labels[0, 5] = 3  # example 0 has 2 tokens: position 5 is padding
    return labels


def _negative() -> torch.Tensor:
    labels = fields()["token_targets"].clone()
    labels[4, 1] = -1
    return labels


BAD = {
    "mask-without-labels": (
        {"token_targets": None},
        "found 'attention_mask' but no 'token_targets'",
    ),
    "labels-of-other-length": (
        {"token_targets": fields()["token_targets"][:, :4]},
        r"expected 'token_targets' of shape \(24, 6\), one entry per input position, got "
        r"\(24, 4\)",
    ),
    "float-labels": (
        {"token_targets": fields()["token_targets"].double()},
        r"expected 'token_targets' as integers, got float64 \(save it with .long\(\)\)",
    ),
    "negative-label": (
        {"token_targets": _negative()},
        "expected 'token_targets' >= 0, or -100 where there is no loss, got -1 at example 4, "
        "position 1",
    ),
    "mask-of-other-shape": (
        {"attention_mask": fields()["attention_mask"][:20]},
        r"expected 'attention_mask' of shape \(24, 6\)",
    ),
    "mask-not-binary": (
        {"attention_mask": fields()["attention_mask"] * 2},
        r"expected 'attention_mask' of 0 \(padding\) and 1 \(tokens\)",
    ),
    "labelled-padding": (
        {"token_targets": _labelled_padding()},
        "'token_targets' labels position 5 of example 0, which 'attention_mask' marks as "
        "padding; set the labels of padding to -100",
    ),
    "vector-inputs": (
        {"inputs": torch.arange(N)},
        r"expected \(N, T\) token ids as 'inputs' with 'token_targets', got shape \(24,\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_token_fields_name_file_key_and_problem(tmp_path: Path, case: str) -> None:
    change, message = BAD[case]
    path = write(tmp_path, _bad(change))
    with pytest.raises(ProbeError, match=message) as caught:
        load_probe(ProbeConfig(path=path, per_class=4))
    assert str(caught.value).startswith(str(path))
