"""A custom ``PreTrainedModel`` that returns a dict, trained by a real Hugging Face ``Trainer``:
its ``checkpoint-N`` folders are read by the real CLI (``check``, ``evaluate``) and the daemon,
and the numbers match the slow float64 reference on the weights ``from_pretrained`` loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from tests.conftest import run_cli
from tests.daemon_harness import DaemonProcess, stored_evaluations, wait_for
from tests.reference import reference_stiffness

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from monitor.stiffness import ProbeSet  # noqa: E402
from tests import hf_dict_model  # noqa: E402

HERE = Path(__file__).resolve().parent


class LogitsOnly(nn.Module):
    """The reference's view of the model: the dict's logits as a plain tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)["logits"]
        return logits


def train(out: Path) -> None:
    """Six optimizer steps, a ``checkpoint-N`` folder every three, as ``Trainer`` saves them."""
    torch.manual_seed(0)
    trainer = transformers.Trainer(
        model=hf_dict_model.build(),
        args=transformers.TrainingArguments(
            output_dir=str(out),
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            per_device_train_batch_size=16,
            learning_rate=0.05,
            report_to=[],
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=hf_dict_model.training_set(),
    )
    trainer.train()


def write_config(folder: Path, run: Path) -> Path:
    shutil.copy(HERE / "hf_dict_model.py", folder / "dict_model.py")
    config = {
        "model": {"factory": "dict_model:build"},
        "probe": {"factory": "dict_model:probe", "per_class": 20},
        "stiffness": {"device": "cpu", "mode": "pair"},
        "runs": [{"name": "hf", "path": str(run)}],
        "watch": {"settle_seconds": 0.3, "poll_interval": 0.2, "rescan_interval": 2},
        "metrics": {"port": 0},
        "store": {"path": "state/state.db"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_trainer_checkpoints_of_a_dict_model_are_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    train(run)
    folders = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in folders] == ["checkpoint-3", "checkpoint-6"]
    assert all((p / "model.safetensors").is_file() for p in folders)
    config = write_config(tmp_path, run)

    checked = run_cli("check", "-c", config)
    assert checked.returncode == 0, checked.stderr
    assert f"{folders[-1]}" in checked.stdout  # the newest checkpoint was loaded

    inputs, targets = hf_dict_model.probe()
    probe = ProbeSet(inputs.double(), targets)
    results = {}
    for folder in folders:
        done = run_cli("evaluate", "-c", config, folder, "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (result["step"], result["format"]) == (int(folder.name.split("-")[1]), "hf")
        trained = hf_dict_model.DictClassifier.from_pretrained(folder)
        want = reference_stiffness(LogitsOnly(trained).double(), probe)
        for got_row, want_row in zip(
            result["cosine"]["matrix"], want.cosine["val-val"].matrix, strict=True
        ):
            assert got_row == pytest.approx(want_row, abs=1e-5)
        assert result["probe_loss"] == pytest.approx(want.probe_loss, rel=1e-5)
        results[result["step"]] = result
    assert results[3]["cosine"]["matrix"] != results[6]["cosine"]["matrix"]  # trained between

    daemon = DaemonProcess(config)
    try:
        stored = wait_for(
            lambda: len(found := stored_evaluations(config)) == 2 and found,
            timeout=120,
            what=f"two stored evaluations; log:\n{daemon.log}",
        )
    finally:
        assert daemon.stop() == 0, daemon.log
    by_step: dict[int, Any] = {e.step: e for e in stored}
    assert set(by_step) == {3, 6}
    for step, evaluation in by_step.items():
        assert evaluation.within_class == pytest.approx(results[step]["cosine"]["within"], abs=1e-6)
