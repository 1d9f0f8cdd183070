"""Two Hugging Face Trainer ranks (torchrun, gloo, CPU); only rank 0 can see the stop file.

``torchrun --nproc-per-node 2 stop_hf_ddp.py STOP_FILE OUT_DIR`` (a test fixture). Rank 1 is
given a path that never exists, so only a decision shared by rank 0 can stop it; a rank that
did not stop would hang the other in its next gradient all-reduce. Each rank writes
``OUT_DIR/rank-N.json`` with the step it stopped at.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import transformers

from monitor.stopping.integrations.huggingface import StiffnessStopCallback


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.cross_entropy(self.layer(x), labels)}


def main() -> int:
    stop_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    view = stop_file if rank == 0 else out / "rank-1-never-exists" / "STOP"
    callback = StiffnessStopCallback(view, check_every_n_steps=3)
    torch.manual_seed(0)
    data = [{"x": torch.randn(4), "labels": i % 2} for i in range(256)]
    trainer = transformers.Trainer(
        model=Tiny(),
        args=transformers.TrainingArguments(
            output_dir=str(out / "hf"),
            max_steps=1000,
            per_device_train_batch_size=4,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=data,
        callbacks=[callback],
    )
    trainer.train()
    report = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "distributed": torch.distributed.is_initialized(),
        "stopped_at_step": callback.stopped_at_step,
        "global_step": trainer.state.global_step,
        "saw_file": callback.stop_info is not None,
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(report))
    if torch.distributed.is_initialized():  # exiting with a live group can abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # Leave without running destructors: at interpreter exit the DDP reducer's gloo group
    # joins its worker thread while holding the GIL, and that thread can be waiting for the
    # GIL to free a finished work's tensor: a deadlock seen on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
