"""A tiny float64 project on disk, and torchrun run on it as a user runs it.

The model (a convolution, a hidden Linear layer and a Linear head: six parameter tensors, so
four ranks can each own whole tensors) is built by a factory module beside the config, with
float64 weights; its checkpoint is a plain ``state_dict`` file; the probe a ``.pt`` file with
a training split, so every pair set is exercised. The factory can be told, through the
environment, to make one rank fail (raise), exit or hang, for the rank-failure tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.conftest import REPO

MODEL = """
import os
import sys
import time

import torch
from torch import nn


def build(classes: int = 3) -> nn.Module:
    fault = os.environ.get("TEST_RANK_FAULT", "")
    if fault and os.environ.get("RANK") == "1":
        if fault == "raise":
            raise RuntimeError("rank 1 was told to fail")
        if fault == "exit":
            sys.stderr.write("rank 1 exits now\\n")
            os._exit(3)
        if fault == "hang":
            time.sleep(600)
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 8),
        nn.Tanh(),
        nn.Linear(8, classes),
    ).double()
"""

CONFIG = """
model:
  factory: tiny_model:build
checkpoint:
  format: state_dict
probe:
  path: probe.pt
  per_class: 10
stiffness:
  mode: {mode}
  device: {device}
  batch_size: 5
  uncertainty: {uncertainty}
  projection: {projection}
runs:
  - name: tiny
    path: checkpoints
"""


@dataclass(frozen=True)
class Project:
    root: Path
    checkpoint: Path

    def config(
        self, mode: str, uncertainty: bool = True, device: str = "cpu", projection: str = "null"
    ) -> Path:
        """The config; ``projection`` is ``stiffness.projection``'s YAML (null: exact)."""
        tag = "" if projection == "null" else f"-projected-{abs(hash(projection))}"
        path = self.root / f"config-{mode}-{device}{tag}.yaml"
        text = CONFIG.format(
            mode=mode,
            uncertainty=str(uncertainty).lower(),
            device=device,
            projection=projection,
        )
        path.write_text(text)
        return path


def make_project(root: Path) -> Project:
    """Model factory, probe and one checkpoint in ``root``."""
    (root / "tiny_model.py").write_text(MODEL)
    generator = torch.Generator().manual_seed(1)
    classes, held, train = 3, 10, 10
    targets = torch.arange(classes).repeat_interleave(held + train)
    is_train = torch.tensor(([False] * held + [True] * train) * classes)
    inputs = torch.randn(targets.shape[0], 1, 6, 6, generator=generator, dtype=torch.float64)
    inputs += targets.view(-1, 1, 1, 1).double() * 0.5  # some class structure
    torch.save({"inputs": inputs, "targets": targets, "split": is_train}, root / "probe.pt")
    sys.path.insert(0, str(root))
    try:
        import tiny_model  # type: ignore[import-not-found]

        model = tiny_model.build()
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("tiny_model", None)
    with torch.no_grad():  # trained a little: not all gradients point the same way
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator).double())
    (root / "checkpoints").mkdir()
    checkpoint = root / "checkpoints" / "step_10.pt"
    torch.save(model.state_dict(), checkpoint)
    return Project(root, checkpoint)


def torchrun(
    ranks: int, *args: str | Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node RANKS -m monitor ARGS`` in a fresh process."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "monitor",
        *map(str, args),
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "ignore::UserWarning",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=timeout,
        check=False,
    )
