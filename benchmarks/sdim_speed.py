"""SDIM training-step speed vs full target attention over the whole history (issue 4: >= 3x at
L = 1,024), and the serving split (BSE table once per user, then candidates scored from the table).

Protocol: one training step = forward + backward + Adam on a batch of random ids with every history
of length L (no padding), median of `--steps` timed steps after one warm-up, same process, same
thread count (OMP_NUM_THREADS=1). Reference = DIN with N = L (target attention over the whole history).
Models as configs/models/{sdim,din}.yaml (16-d item and category fields; SDIM m=48, tau=3).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sdim_speed
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.ctr_planted import step_time
from benchmarks.results import row, write_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="256,1024")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--num-items", type=int, default=100_000)
    p.add_argument("--num-cats", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows, out = [], {}
    command = f".venv/bin/python -m benchmarks.sdim_speed --lengths {args.lengths} --steps {args.steps}"
    for length in (int(x) for x in args.lengths.split(",")):
        t_sdim = step_time({"name": "sdim"}, args.num_items, args.num_cats, length, args.batch_size, args.steps)
        t_din = step_time({"name": "din", "max_recent": length}, args.num_items, args.num_cats, length,
                          args.batch_size, args.steps)
        out[length] = {"sdim_s": t_sdim, "din_full_s": t_din, "speedup": t_din / t_sdim}
        rows.append(row(name="sdim_speed", model="sdim", dataset=f"random ids, {args.num_items} items, L={length}",
                        metric="train_step_seconds", value=t_sdim, reference=t_din, ratio=t_din / t_sdim, seed=0,
                        command=command,
                        protocol=f"training step fwd+bwd+Adam, batch {args.batch_size}, all histories length {length}, "
                                 f"median of {args.steps}; reference = DIN over the whole history; ratio = speed-up"))
        write_rows("sdim_speed", rows)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
