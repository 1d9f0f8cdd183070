"""Two Lightning DDP ranks on the CPU where only rank 0 can see the stop file (a test fixture).

``stop_lightning_ddp.py STOP_FILE OUT_DIR``: Lightning re-runs this script for rank 1. Rank 1
is given a path that never exists, so only a decision shared by rank 0 can stop it; a rank that
did not stop would hang the other in its next gradient all-reduce. Each rank writes
``OUT_DIR/rank-N.json`` with the step it stopped at.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from monitor.stopping.integrations.lightning import StiffnessStopCallback


class Tiny(pl.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> int:
    stop_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    view = stop_file if rank == 0 else out / "rank-1-never-exists" / "STOP"
    callback = StiffnessStopCallback(view, check_every_n_steps=3)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 4), torch.randint(0, 2, (256,)))
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=1000,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
    report = {
        "rank": trainer.global_rank,
        "stopped_at_step": callback.stopped_at_step,
        "global_step": trainer.global_step,
        "saw_file": callback.stop_info is not None,
    }
    (out / f"rank-{trainer.global_rank}.json").write_text(json.dumps(report))
    if torch.distributed.is_initialized():  # exiting with a live group can abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # Leave without running destructors: at exit a DDP reducer's gloo group can deadlock
    # joining its worker thread (see stop_hf_ddp.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
