"""One rank of a real torch.distributed (gloo, CPU) group deciding whether to stop (a test fixture).

Run once per rank: ``stop_dist_worker.py RANK WORLD INIT_FILE PATH [PATH ...]``. Each PATH is
this rank's view of one case (the test gives other ranks a nonexistent path). The rank prints
one JSON line: ``should_stop_distributed`` for each case, then a distributed ``StopFilePoller``
on the first case's path called three times with ``every_n_calls=2``.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch.distributed as dist

from monitor.stopping.trainer import StopFilePoller, should_stop_distributed


def main() -> int:
    rank, world, init_file, *paths = sys.argv[1:]
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=int(rank),
        world_size=int(world),
        timeout=timedelta(seconds=60),
    )
    try:
        decisions = [should_stop_distributed(path) for path in paths]
        poller = StopFilePoller(paths[0], every_n_calls=2, distributed=True)
        polled = [poller() for _ in range(3)]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    result = {"rank": int(rank), "decisions": decisions, "polled": polled, "info": poller.info}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
