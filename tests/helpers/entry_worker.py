"""Runs one of p2p's process entries the way its launcher would, then records whether the
process still holds a process group when the entry has returned (it must not: p2p.dist.leave).

    python tests/helpers/entry_worker.py OUT cli section.key=value ...   (under torchrun)
    python tests/helpers/entry_worker.py OUT job section.key=value ...   (as an srun task: SLURM_* set)

Writes OUT/rank<R>.json: {"code": the entry's exit code or result, "group_alive": bool}.
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed


def main() -> int:
    out, entry, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    if entry == "cli":  # `p2p train` under torchrun
        from p2p.cli import main as p2p_main

        rank = int(os.environ["RANK"])
        code = p2p_main(["train", *overrides])
    else:  # what submitit runs on every task of a `p2p submit` job
        from p2p.config import load_config
        from p2p.slurm.job import TrainJob

        rank = int(os.environ["SLURM_PROCID"])
        code = TrainJob(load_config(None, overrides).to_dict())()["step"]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"code": code, "group_alive": torch.distributed.is_initialized()}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
