"""Checkpoint writers for the loader's tests: each saves a model the way a real trainer does.

Every writer takes a folder and a trained ``Net`` and returns the checkpoint's path. They use
the real libraries (``torch.save``, safetensors, ``torch.distributed.checkpoint``, TorchScript,
``torch.export``); Lightning is not installed, so its checkpoint dict is rebuilt key for key as
Lightning 2.x's ``_CheckpointConnector.dump_checkpoint`` writes it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn


class Net(nn.Module):
    """Small, but with what trips loaders up: nested modules, BatchNorm buffers (an int64
    ``num_batches_tracked`` among them) and dropout."""

    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.25)
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Wrapped(nn.Module):
    """A factory that wraps the network, so the model's keys gain a ``net.`` prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Tied(nn.Module):
    """An LM-style model whose head shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(tokens))


class Hyperparameters:
    """A custom class in a checkpoint: loading it needs full unpickling."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


def trained_net(seed: int = 0) -> Net:
    """A ``Net`` whose weights and BatchNorm statistics differ from a fresh one's."""
    torch.manual_seed(seed)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
    return net.eval()


def optimizer_state(net: nn.Module) -> dict[str, Any]:
    """A real Adam state (exp_avg, exp_avg_sq, step tensors) for ``net``."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    net(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    net.eval()
    return optimizer.state_dict()


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((prefix + key, value) for key, value in state.items())


def nested(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``{"body.0.weight": t}`` -> ``{"body": {"0": {"weight": t}}}``."""
    tree: dict[str, Any] = {}
    for key, value in state.items():
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


# --- torch.save ------------------------------------------------------------------------------


def write_raw(folder: Path, net: Net) -> Path:
    path = folder / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


def write_legacy(folder: Path, net: Net) -> Path:
    """The pre-1.6 (non-zip) serialization, still written by some old pipelines."""
    path = folder / "legacy.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def write_model_state_dict(folder: Path, net: Net) -> Path:
    path = folder / "checkpoint.pt"
    torch.save(
        {
            "model_state_dict": net.state_dict(),
            "optimizer_state_dict": optimizer_state(trained_net(1)),
            "global_step": 250,
            "epoch": 2,
            "loss": 0.125,
        },
        path,
    )
    return path


def write_state_dict_epoch(folder: Path, net: Net) -> Path:
    path = folder / "epoch_4.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 4}, path)
    return path


def write_step_inside_raw(folder: Path, net: Net) -> Path:
    """A raw state dict with a step counter dropped in beside the tensors."""
    path = folder / "model.pt"
    torch.save({**net.state_dict(), "step": 17}, path)
    return path


def write_nested(folder: Path, net: Net) -> Path:
    path = folder / "nested.pt"
    torch.save({"model": nested(net.state_dict()), "step": torch.tensor(9)}, path)
    return path


def write_ddp(folder: Path, net: Net) -> Path:
    path = folder / "ddp.pt"
    torch.save({"model": prefixed(net.state_dict(), "module."), "step": 33}, path)
    return path


def write_compiled(folder: Path, net: Net) -> Path:
    path = folder / "compiled.pt"
    torch.save(prefixed(net.state_dict(), "_orig_mod."), path)
    return path


def write_ddp_compiled(folder: Path, net: Net) -> Path:
    path = folder / "ddp_compiled.pt"
    torch.save(prefixed(net.state_dict(), "module._orig_mod."), path)
    return path


# --- Lightning -----------------------------------------------------------------------------


def _progress(total: int, current: int, *, started: bool = True) -> dict[str, Any]:
    fields = ("ready", "completed", "started", "processed") if started else ("ready", "completed")
    return {
        "total": dict.fromkeys(fields, total),
        "current": dict.fromkeys(fields, current),
    }


def lightning_checkpoint(net: Net, epoch: int, global_step: int, folder: Path) -> dict[str, Any]:
    """What Lightning 2.4 saves for a LightningModule holding ``self.model = net``."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    batches = global_step // (epoch + 1)
    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": global_step},
        "epoch_loop.batch_progress": {**_progress(global_step, batches), "is_last_batch": True},
        "epoch_loop.scheduler_progress": _progress(epoch + 1, 1, started=False),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {
                "step": _progress(global_step, batches, started=False),
                "zero_grad": _progress(global_step, batches),
            }
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, started=False),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": {**_progress(8, 2), "is_last_batch": True},
        "epoch_progress": _progress(epoch + 1, epoch),
    }
    eval_loop = {"state_dict": {}, "batch_progress": {**_progress(0, 0), "is_last_batch": False}}
    monitor = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
    monitor += "'every_n_epochs': 1, 'train_time_interval': None}"
    return {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": prefixed(net.state_dict(), "model."),
        "loops": {
            "fit_loop": fit_loop,
            "validate_loop": eval_loop,
            "test_loop": eval_loop,
            "predict_loop": eval_loop,
        },
        "callbacks": {
            monitor: {
                "monitor": "val_loss",
                "best_model_score": torch.tensor(0.25),
                "best_model_path": str(folder / "epoch=2-step=90.ckpt"),
                "current_score": torch.tensor(0.3),
                "dirpath": str(folder),
                "best_k_models": {str(folder / "epoch=2-step=90.ckpt"): torch.tensor(0.25)},
                "kth_best_model_path": str(folder / "epoch=2-step=90.ckpt"),
                "kth_value": torch.tensor(0.25),
                "last_model_path": "",
            },
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {
                "wait_count": 1,
                "stopped_epoch": 0,
                "best_score": torch.tensor(0.25),
                "patience": 3,
            },
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"hidden": 8, "lr": 0.001, "classes": 3},
    }


def write_lightning(folder: Path, net: Net) -> Path:
    path = folder / "epoch=3-step=120.ckpt"
    torch.save(lightning_checkpoint(net, epoch=3, global_step=120, folder=folder), path)
    return path


# --- safetensors and Hugging Face -----------------------------------------------------------


def write_safetensors(folder: Path, net: Net) -> Path:
    path = folder / "weights.safetensors"
    save_file(net.state_dict(), path, metadata={"step": "7", "format": "pt"})
    return path


def _hf_folder(folder: Path, step: int) -> Path:
    """``transformers.Trainer``'s layout: checkpoint-N with its trainer_state.json."""
    path = folder / f"checkpoint-{step}"
    path.mkdir()
    state = {"global_step": step, "epoch": 1.5, "log_history": [], "best_metric": None}
    (path / "trainer_state.json").write_text(json.dumps(state))
    (path / "config.json").write_text(json.dumps({"model_type": "net", "hidden": 8}))
    return path


def _shards(net: Net) -> list[dict[str, torch.Tensor]]:
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    keys = list(state)
    return [{k: state[k] for k in keys[:4]}, {k: state[k] for k in keys[4:]}]


def _write_index(path: Path, name: str, shards: list[tuple[str, dict[str, torch.Tensor]]]) -> None:
    """The index JSON as ``transformers.modeling_utils`` writes it."""
    total = sum(t.numel() * t.element_size() for _, shard in shards for t in shard.values())
    weight_map = {key: file for file, shard in shards for key in shard}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_hf_safetensors(folder: Path, net: Net) -> Path:
    path = _hf_folder(folder, 300)
    save_file(net.state_dict(), path / "model.safetensors", metadata={"format": "pt"})
    return path


def write_hf_sharded_safetensors(folder: Path, net: Net) -> Path:
    path = _hf_folder(folder, 400)
    shards = []
    for number, shard in enumerate(_shards(net), start=1):
        name = f"model-{number:05d}-of-00002.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        shards.append((name, shard))
    _write_index(path, "model.safetensors.index.json", shards)
    return path


def write_hf_bin(folder: Path, net: Net) -> Path:
    path = folder / "hf-model"
    path.mkdir()
    torch.save(net.state_dict(), path / "pytorch_model.bin")
    return path


def write_hf_sharded_bin(folder: Path, net: Net) -> Path:
    path = _hf_folder(folder, 500)
    shards = []
    for number, shard in enumerate(_shards(net), start=1):
        name = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save(shard, path / name)
        shards.append((name, shard))
    _write_index(path, "pytorch_model.bin.index.json", shards)
    return path


# --- torch.distributed.checkpoint, TorchScript, torch.export ---------------------------------


def write_dcp(folder: Path, net: Net) -> Path:
    """A trainer's DCP save in one process: model, optimizer and a step counter."""
    path = folder / "dcp-checkpoint"
    state = {"model": net.state_dict(), "optim": optimizer_state(trained_net(1)), "step": 5}
    dcp.save(state, checkpoint_id=path)
    return path


def write_dcp_flat(folder: Path, net: Net) -> Path:
    path = folder / "step_60"
    dcp.save(dict(net.state_dict()), checkpoint_id=path)
    return path


def write_torchscript(folder: Path, net: Net) -> Path:
    path = folder / "scripted.pt"
    torch.jit.script(net).save(str(path), _extra_files={"step": "40"})
    return path


def write_export(folder: Path, net: Net) -> Path:
    path = folder / "program.pt2"
    batch = torch.export.Dim("batch", min=2, max=1024)
    program = torch.export.export(
        net.eval(), (torch.randn(4, 4),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, path, extra_files={"global_step": "80"})
    return path


def write_export_in_train_mode(folder: Path, net: Net, dynamic: bool = False) -> Path:
    """Exported from a training-mode net; with a fixed batch of 4 unless ``dynamic``."""
    path = folder / "train-mode.pt2"
    shapes = {"x": {0: torch.export.Dim("batch", min=2, max=1024)}} if dynamic else None
    program = torch.export.export(net.train(), (torch.randn(4, 4),), dynamic_shapes=shapes)
    net.eval()
    torch.export.save(program, path)
    return path
