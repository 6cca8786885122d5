"""torchrec EmbeddingCollection vs plain torch embedding on the CPU, in the same run.

Two measurements, each forward+backward, interleaved (torch, torchrec, torch, ...) so both see the
same machine load; the median over repetitions is reported:
- "lookup": the item lookup alone (ids [B,n] -> [B,n,d], sum, backward into the table),
- "sasrec_step": a whole SASRec training step (BCE loss, 1 negative) with each backend.
Defaults are SASRec-sized on Games: B=128, n=200, d=50, 23,715 items (+ padding row).

    .venv/bin/python -m benchmarks.embedding_torchrec
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from benchmarks.results import row, write_rows  # noqa: E402
from recsys.losses import LossConfig  # noqa: E402
from recsys.models.item_embedding import ItemEmbedding  # noqa: E402
from recsys.models.sasrec import SASRec, SASRecConfig  # noqa: E402

GAMES_ITEMS = 23715


def _time(fn, reps: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--num-items", type=int, default=GAMES_ITEMS)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    B, n, d, N = args.batch, args.max_len, args.dim, args.num_items
    # realistic left padding: lengths ~ Games (short), ids uniform over items
    lengths = torch.randint(2, n + 1, (B,), generator=g)
    ids = torch.randint(1, N + 1, (B, n), generator=g) * (torch.arange(n)[None, :] >= n - lengths[:, None])
    pos = torch.roll(ids, -1, 1) * (ids != 0)
    batch = {"items": ids, "pos": pos, "neg": torch.randint(1, N + 1, (B, n, 1), generator=g)}

    lookups = {b: ItemEmbedding(N + 1, d, b) for b in ("torch", "torchrec")}
    with torch.no_grad():
        lookups["torchrec"].weight.copy_(lookups["torch"].weight)
    models = {b: SASRec(SASRecConfig(dim=d, max_len=n, embedding_backend=b), N).train() for b in lookups}
    models["torchrec"].load_state_dict(
        {k.replace("item_emb.table", "item_emb.collection.embeddings.item_table.weight"): v
         for k, v in models["torch"].state_dict().items()})

    def lookup_step(b: str) -> None:
        emb = lookups[b]
        emb.zero_grad(set_to_none=True)
        emb(ids).sum().backward()

    def model_step(b: str) -> None:
        m = models[b]
        m.zero_grad(set_to_none=True)
        loss, _ = m.training_loss(batch, LossConfig(kind="bce"))
        loss.backward()

    results: dict[tuple[str, str], float] = {}
    for what, step, reps in (("lookup", lookup_step, args.reps), ("sasrec_step", model_step, max(args.reps // 3, 5))):
        times: dict[str, list[float]] = {"torch": [], "torchrec": []}
        for b in times:
            _time(lambda b=b: step(b), args.warmup)
        for _ in range(reps):  # interleaved
            for b in times:
                times[b] += _time(lambda b=b: step(b), 1)
        for b in times:
            results[(what, b)] = statistics.median(times[b]) * 1000
        print(f"{what}: torch {results[(what, 'torch')]:.3f} ms, torchrec {results[(what, 'torchrec')]:.3f} ms, "
              f"ratio torchrec/torch {results[(what, 'torchrec')] / results[(what, 'torch')]:.2f} "
              f"(median of {reps}, forward+backward, B={B} n={n} d={d} items={N}, {args.threads} thread(s))")

    if not args.no_write:
        cmd = ".venv/bin/python -m benchmarks.embedding_torchrec" + (
            f" --reps {args.reps}" if args.reps != 30 else "")
        rows = []
        for what in ("lookup", "sasrec_step"):
            tr, to = results[(what, "torchrec")], results[(what, "torch")]
            rows.append(row(
                name="embedding_torchrec", model="sasrec" if what == "sasrec_step" else "item_embedding",
                dataset=f"synthetic ids, Games-sized catalogue ({N} items)",
                protocol=(f"{what} forward+backward, B={B} n={n} d={d}, CPU {args.threads} thread(s), "
                          f"median of interleaved reps; value = torchrec EmbeddingCollection+KJT, reference = torch"),
                metric="ms per batch", value=round(tr, 4), reference=round(to, 4), ratio=round(tr / to, 4),
                seed=0, command=cmd))
        path = write_rows("embedding_torchrec", rows)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
