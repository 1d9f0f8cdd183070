"""``restore_best_weights`` with the real Lightning and Hugging Face trainers (issue 14): when
the stop comes, the callback loads the best checkpoint the daemon named, in the format each
library writes (a Lightning ``.ckpt``, a Hugging Face ``checkpoint-N`` folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.stopping.stop_file import StopSignal, write_stop_file

pytestmark = pytest.mark.slow


def stop_naming(best: Path, step: int) -> StopSignal:
    best_checkpoint = {"metric": "probe_loss", "mode": "min", "step": 2, "value": 0.1,
                       "path": str(best)}  # fmt: skip
    return StopSignal(run="r", checkpoint=f"/ckpt/{step}", step=step, rule="rule",
                      reason="why", metric="probe_loss", value=0.2, best=0.1,
                      best_checkpoint=best_checkpoint)  # fmt: skip


def test_lightning_restores_the_best_weights_when_the_stop_comes(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from monitor.stopping.integrations.lightning import StiffnessStopCallback

    stop_file = tmp_path / "STOP"
    module_base: Any = pl.LightningModule
    callback_base: Any = pl.Callback

    class Tiny(module_base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.5)

    best: dict[str, torch.Tensor] = {}

    class Daemon(callback_base):  # type: ignore[misc]
        """Stands in for the daemon: the checkpoint of step 2 is the best; stop at step 6."""

        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            if trainer.global_step == 2:
                trainer.save_checkpoint(tmp_path / "step_2.ckpt")
                best.update({k: v.clone() for k, v in module.state_dict().items()})
            if trainer.global_step == 6:
                write_stop_file(stop_file, stop_naming(tmp_path / "step_2.ckpt", 6))

    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    callback = StiffnessStopCallback(stop_file, check_every_n_steps=2, restore_best_weights=True)
    module = Tiny()
    trainer = pl.Trainer(accelerator="cpu", max_steps=1000, callbacks=[Daemon(), callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))

    assert callback.stopped_at_step == 6 and callback.restored_from == str(tmp_path / "step_2.ckpt")
    assert best and all(torch.equal(module.state_dict()[k], v) for k, v in best.items())


def test_huggingface_restores_a_checkpoint_folder_when_the_stop_comes(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from monitor.stopping.integrations.huggingface import StiffnessStopCallback

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    stop_file = tmp_path / "out" / "STOP"
    callback = StiffnessStopCallback(stop_file, check_every_n_steps=2, restore_best_weights=True)

    class Daemon(transformers.TrainerCallback):  # type: ignore[misc]
        """Stands in for the daemon: checkpoint-2 is the best; the stop comes at step 6."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 6:
                write_stop_file(stop_file, stop_naming(tmp_path / "out" / "checkpoint-2", 6))
            return control

    data = [{"input_ids": torch.randint(0, 50, (8,)), "labels": torch.tensor(i % 2)}
            for i in range(64)]  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=40, per_device_train_batch_size=4,
        save_strategy="steps", save_steps=2, learning_rate=0.05, report_to=[],
        use_cpu=True, logging_strategy="no",
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[Daemon(), callback])  # fmt: skip
    trainer.train()

    assert callback.stopped_at_step is not None and callback.stopped_at_step >= 6
    assert callback.restored_from == str(tmp_path / "out" / "checkpoint-2")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "checkpoint-2" / "model.safetensors"))
    live = model.state_dict()
    assert saved and all(torch.equal(live[k], v) for k, v in saved.items())
    assert json.loads(stop_file.read_text())["best_checkpoint"]["step"] == 2


def test_restore_best_loads_or_says_why_it_kept_the_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from monitor.stopping.integrations.best import restore_best

    torch.manual_seed(0)
    best, live = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(best.state_dict(), tmp_path / "best.pt")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "other.pt")
    stop_file = tmp_path / "STOP"
    since = 0.0

    def info(path: Path) -> dict[str, Any]:
        return {"best_checkpoint": {"path": str(path)}}

    assert restore_best(live, stop_file, info(tmp_path / "gone.pt"), since) is None
    assert restore_best(live, stop_file, info(tmp_path / "other.pt"), since) is None
    assert not torch.equal(live.weight, best.weight)  # kept, not half-loaded
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("the last weights are kept" in e for e in errors)
    assert "gone.pt" in errors[0] and "does not fit the model" in errors[1]
    assert restore_best(live, stop_file, None, since) is None  # no stop file, no best file
    loaded = restore_best(live, stop_file, info(tmp_path / "best.pt"), since)
    assert loaded == str(tmp_path / "best.pt") and torch.equal(live.weight, best.weight)
