"""``torchrun -m monitor evaluate --split fsdp`` on 2 and 4 CPU processes (gloo, FSDP2).

The weights are sharded (``fully_shard`` per parameter-owning module) and each rank runs
its span of the probe through gathered weights; the float64 results must equal one process
to 1e-10 and the slow reference, as the other splits do (``test_torchrun``). Pair mode
gives the ranks different numbers of passes (each recomputes other columns), which the
lockstep must even out or the all-gathers would hang. A run must also exit 0 every time:
an FSDP2 model alive at interpreter exit used to abort the process half the time.
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed.project import Project, make_project, torchrun
from tests.distributed.test_torchrun import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize(("mode", "ranks"), [("class", 2), ("class", 4), ("pair", 2), ("pair", 4)])
def test_fsdp_split_equals_one_process(project: Project, mode: str, ranks: int) -> None:
    got = evaluate(project, ranks, mode, "--split", "fsdp")
    assert got["counts"]["parameters"] == 3 * 9 + 3 + 48 * 8 + 8 + 8 * 3 + 3
    assert got["uncertainty"]["within_class"] is not None


def test_fsdp_split_refuses_a_parameter_no_layer_rule_covers(project: Project) -> None:
    model = project.root / "tiny_model.py"
    text = model.read_text()
    model.write_text(
        text.replace(
            "    torch.manual_seed(0)\n",
            "    torch.manual_seed(0)\n    class Scale(nn.Module):\n"
            "        def __init__(self):\n            super().__init__()\n"
            "            self.s = nn.Parameter(torch.ones(3))\n"
            "        def forward(self, x):\n            return x * self.s\n",
        ).replace("nn.Linear(8, classes),\n", "nn.Linear(8, classes),\n        Scale(),\n")
    )
    weights = torch.load(project.checkpoint, weights_only=True)
    checkpoint = project.root / "with_scale.pt"
    torch.save({**weights, "6.s": torch.ones(3, dtype=torch.float64)}, checkpoint)
    try:
        config = project.config("class", uncertainty=False)
        ran = torchrun(2, "evaluate", "-c", config, checkpoint, "--split", "fsdp")
    finally:
        model.write_text(text)
    assert ran.returncode != 0
    assert "no rule covers 6.s" in ran.stderr, ran.stderr[-3000:]
