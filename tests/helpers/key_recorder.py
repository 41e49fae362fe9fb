"""`p2p train` (the command: notices, exit codes and all) that also records which samples every
step trained on, for the world-size tests (tests/faults/test_world_size.py). Runs alone or under
torchrun:

    python tests/helpers/key_recorder.py OUT section.key=value ...

Every rank appends one JSON line per step to OUT/keys-rank<R>.jsonl: {"step", "epoch", "keys"}.
Only the recording is added (a spy on the batches the loop consumes); the training is p2p's.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo

import p2p.train.loop as loop  # noqa: E402
import p2p.train.run as run  # noqa: E402
from p2p.cli import main as p2p_main  # noqa: E402


def main() -> int:
    out, overrides = sys.argv[1], sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    real_batches, real_prepare = loop.device_batches, run.Run.prepare_for

    def batches(*args, **kwargs):
        for epoch, index, batch in real_batches(*args, **kwargs):
            batch.recorded_epoch = epoch
            yield epoch, index, batch

    def prepare_for(self, batch, step):  # the loop's device step, for `step` (0-based), maybe a batch ahead
        with open(os.path.join(out, f"keys-rank{self.rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": step + 1, "epoch": batch.recorded_epoch, "keys": list(batch.keys)}) + "\n")
        return real_prepare(self, batch, step)

    loop.device_batches, run.Run.prepare_for = batches, prepare_for
    return p2p_main(["train", *overrides])


if __name__ == "__main__":
    raise SystemExit(main())
