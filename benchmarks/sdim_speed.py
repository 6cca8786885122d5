"""SDIM training-step speed vs full target attention over the whole history (issue 4: >= 3x at
L = 1,024), and the serving split (BSE table once per user, then candidates scored from the table).

Protocol: one training step = forward + backward + Adam on a batch of random ids with every history
of length L (no padding), median of `--steps` timed steps after one warm-up, same process, same
thread count (OMP_NUM_THREADS=1). Reference = the SDIM paper's: "DIN (long seq)", i.e. DIN's
learnable-MLP attention unit over all L behaviours (DIN `attention: mlp, max_recent: null`; the paper's
5.0x Taobao / 11.4x industrial speed-ups are relative to it), with the same 16-d item/category
embeddings and [v_t, u, v_t*u] head; second reference = scaled dot-product softmax target attention over
all L (DIN `attention: dot, max_recent: null`), cheaper than the paper's reference.
SDIM: m=48, tau=3, short-term 16 (configs/models/sdim.yaml).

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
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--num-items", type=int, default=100_000)
    p.add_argument("--num-cats", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows, out = [], {}
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sdim_speed --lengths {args.lengths} --steps {args.steps} "
               f"--batch-size {args.batch_size}")
    refs = {"the SDIM paper's reference DIN (long seq): DIN learnable-MLP attention over all L (DIN attention=mlp, "
            "max_recent=null)": {"name": "din", "attention": "mlp", "max_recent": None},
            "second reference (not the paper's): dot-product target attention over all L (DIN attention=dot, "
            "max_recent=null)": {"name": "din", "attention": "dot", "max_recent": None}}
    for length in (int(x) for x in args.lengths.split(",")):
        t_sdim = step_time({"name": "sdim"}, args.num_items, args.num_cats, length, args.batch_size, args.steps)
        out[length] = {"sdim_s": t_sdim}
        for ref_name, spec in refs.items():
            t_ref = step_time(spec, args.num_items, args.num_cats, length, args.batch_size, args.steps)
            out[length][ref_name] = {"ref_s": t_ref, "speedup": t_ref / t_sdim}
            rows.append(row(name="sdim_speed", model="sdim", dataset=f"random ids, {args.num_items} items, L={length}",
                            metric="train_step_seconds", value=t_sdim, reference=t_ref, ratio=t_ref / t_sdim, seed=0,
                            command=command,
                            protocol=f"training step fwd+bwd+Adam, batch {args.batch_size}, all histories length "
                                     f"{length}, median of {args.steps}; reference = {ref_name}; ratio = speed-up "
                                     "(bar: >= 3x at L=1024)"))
            write_rows("sdim_speed", rows)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
