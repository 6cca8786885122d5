"""SASRec training throughput (samples/s) on Games at batch 128 x maxlen 200, against a faithful
re-implementation of pmixer/SASRec.pytorch's training step (commit <= 9f6a02b, the "original"
LayerNorm placement: nn.MultiheadAttention on seq-first tensors, Conv1d point-wise FFN,
numpy arrays -> LongTensor inside the model, a Python per-user sampler with `random_neq`
rejection loops, BCEWithLogitsLoss on pos != 0 indices) measured in the same process.

Protocol: same data (Games build), same shapes (B=128, n=200, d=50, 2 blocks, 1 head, dropout 0.2
as pmixer's defaults), Adam(1e-3, betas 0.9/0.98), torch threads as given by --threads.
Time per batch = sampling + forward + backward + step (pmixer's sampler runs in 3 worker
processes; on this shared 2-core machine it is timed inline, and the step-only time is reported
too). Ours = NextItemTask.train_batches + SASRec.training_loss + Adam, i.e. what recsys.train.fit
runs per step.

    .venv/bin/python -m benchmarks.train_speed --batches 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import ROOT as REPO
from benchmarks.common import ensure_dataset_build

GAMES_BUILD = REPO / "runs" / "games" / "build"


def ensure_games_build() -> Path:
    return ensure_dataset_build("games", GAMES_BUILD)


# ---------------------------------------------------------------- pmixer reference (faithful copy of the logic)

class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden_units: int, dropout_rate: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout1 = nn.Dropout(p=dropout_rate)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout2 = nn.Dropout(p=dropout_rate)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.dropout2(self.conv2(self.relu(self.dropout1(self.conv1(inputs.transpose(-1, -2))))))
        outputs = outputs.transpose(-1, -2)
        outputs += inputs
        return outputs


class PmixerSASRec(nn.Module):
    def __init__(self, item_num: int, hidden: int, maxlen: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(item_num + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen + 1, hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(p=dropout)
        self.attention_layernorms = nn.ModuleList()
        self.attention_layers = nn.ModuleList()
        self.forward_layernorms = nn.ModuleList()
        self.forward_layers = nn.ModuleList()
        self.last_layernorm = nn.LayerNorm(hidden, eps=1e-8)
        for _ in range(blocks):
            self.attention_layernorms.append(nn.LayerNorm(hidden, eps=1e-8))
            self.attention_layers.append(nn.MultiheadAttention(hidden, heads, dropout))
            self.forward_layernorms.append(nn.LayerNorm(hidden, eps=1e-8))
            self.forward_layers.append(PointWiseFeedForward(hidden, dropout))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def log2feats(self, log_seqs: np.ndarray) -> torch.Tensor:
        seqs = self.item_emb(torch.LongTensor(log_seqs))
        seqs *= self.item_emb.embedding_dim ** 0.5
        poss = np.tile(np.arange(1, log_seqs.shape[1] + 1), [log_seqs.shape[0], 1])
        poss *= log_seqs != 0
        seqs += self.pos_emb(torch.LongTensor(poss))
        seqs = self.emb_dropout(seqs)
        tl = seqs.shape[1]
        attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool))
        for i in range(len(self.attention_layers)):
            seqs = torch.transpose(seqs, 0, 1)
            Q = self.attention_layernorms[i](seqs)
            mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs, attn_mask=attention_mask)
            seqs = Q + mha_outputs
            seqs = torch.transpose(seqs, 0, 1)
            seqs = self.forward_layernorms[i](seqs)
            seqs = self.forward_layers[i](seqs)
        return self.last_layernorm(seqs)

    def forward(self, log_seqs: np.ndarray, pos_seqs: np.ndarray, neg_seqs: np.ndarray):
        log_feats = self.log2feats(log_seqs)
        pos_embs = self.item_emb(torch.LongTensor(pos_seqs))
        neg_embs = self.item_emb(torch.LongTensor(neg_seqs))
        return (log_feats * pos_embs).sum(dim=-1), (log_feats * neg_embs).sum(dim=-1)


def random_neq(low: int, high: int, s: set, rng: np.random.Generator) -> int:
    t = int(rng.integers(low, high))
    while t in s:
        t = int(rng.integers(low, high))
    return t


def pmixer_sample_batch(user_train: list[list[int]], users: np.ndarray, itemnum: int, maxlen: int,
                        rng: np.random.Generator):
    """pmixer's `sample_function`: per-user Python loop over the reversed train sequence."""
    out = []
    for uid in users:
        seq = np.zeros([maxlen], dtype=np.int32)
        pos = np.zeros([maxlen], dtype=np.int32)
        neg = np.zeros([maxlen], dtype=np.int32)
        nxt = user_train[uid][-1]
        idx = maxlen - 1
        ts = set(user_train[uid])
        for i in reversed(user_train[uid][:-1]):
            seq[idx] = i
            pos[idx] = nxt
            if nxt != 0:
                neg[idx] = random_neq(1, itemnum + 1, ts, rng)
            nxt = i
            idx -= 1
            if idx == -1:
                break
        out.append((uid, seq, pos, neg))
    _, seq, pos, neg = zip(*out)
    return np.array(seq), np.array(pos), np.array(neg)


def time_reference(task, batches: int, batch_size: int, maxlen: int, warmup: int = 2) -> tuple[float, float]:
    """(seconds per batch incl. sampling, seconds per batch model step only)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    user_train = [task.sequences.user_items(r)[: task.train_ends[r]].tolist() for r in range(task.sequences.num_users)]
    eligible = task.train_rows
    model = PmixerSASRec(task.num_items, 50, maxlen, 2, 1, 0.2)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    bce = nn.BCEWithLogitsLoss()
    total = step_total = 0.0
    for it in range(warmup + batches):
        t0 = time.perf_counter()
        users = rng.choice(eligible, batch_size, replace=False)
        seq, pos, neg = pmixer_sample_batch(user_train, users, task.num_items, maxlen, rng)
        t1 = time.perf_counter()
        pos_logits, neg_logits = model(seq, pos, neg)
        pos_labels, neg_labels = torch.ones(pos_logits.shape), torch.zeros(neg_logits.shape)
        opt.zero_grad()
        indices = np.where(pos != 0)
        loss = bce(pos_logits[indices], pos_labels[indices])
        loss += bce(neg_logits[indices], neg_labels[indices])
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if it >= warmup:
            total += t2 - t0
            step_total += t2 - t1
    return total / batches, step_total / batches


def time_ours(task, batches: int, batch_size: int, warmup: int = 2) -> float:
    from recsys.models.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec.from_config(SASRecConfig(dim=50, num_blocks=2, num_heads=1, dropout=0.2, max_len=task.max_len),
                               num_items=task.num_items)
    model.train()
    from recsys.train import TrainConfig, make_optimizer

    opt = make_optimizer(model, TrainConfig(lr=1e-3, betas=(0.9, 0.98)))  # the loop's optimizer (fused Adam)
    gen = torch.Generator().manual_seed(0)
    it = iter(task.train_batches(1, batch_size, gen))
    total = 0.0
    for i in range(warmup + batches):
        t0 = time.perf_counter()
        batch = next(it)
        loss, _ = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            total += time.perf_counter() - t0
    return total / batches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from recsys.losses import LossConfig
    from recsys.tasks.next_item import NextItemTask

    task = NextItemTask(ensure_games_build(), args.max_len, LossConfig(kind="bce", num_negatives=1))
    ours = time_ours(task, args.batches, args.batch_size)
    ref_total, ref_step = time_reference(task, args.batches, args.batch_size, args.max_len)
    b = args.batch_size
    proto = (f"SASRec train step on Games, batch {b} x maxlen {args.max_len}, d 50, 2 blocks, 1 head, BCE 1 neg, "
             f"Adam; {args.batches} timed batches after 2 warm-up; torch threads {args.threads}; "
             "reference = pmixer SASRec.pytorch (<=9f6a02b) step re-implemented, same process")
    print(f"ours: {ours:.3f} s/batch ({b / ours:.0f} samples/s); pmixer reference: {ref_total:.3f} s/batch incl. "
          f"its Python sampler ({b / ref_total:.0f} samples/s), {ref_step:.3f} s/batch step only; "
          f"ratio {ref_total / ours:.2f}x (vs step only {ref_step / ours:.2f}x)  [{proto}]")
    if args.no_write:
        return 0
    from benchmarks.results import row, write_rows

    cmd = ".venv/bin/python -m benchmarks.train_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [
        row(name="train_speed", model="sasrec", dataset="amazon-games", protocol=proto, metric="samples_per_s",
            value=b / ours, reference=b / ref_total, ratio=ref_total / ours, command=cmd.strip()),
        row(name="train_speed", model="sasrec", dataset="amazon-games",
            protocol=proto + "; reference timed WITHOUT its sampler (model step only)", metric="samples_per_s_vs_step_only",
            value=b / ours, reference=b / ref_step, ratio=ref_step / ours, command=cmd.strip()),
        row(name="train_speed", model="sasrec", dataset="amazon-games", protocol=proto, metric="seconds_per_batch",
            value=ours, reference=ref_total, ratio=ours / ref_total, command=cmd.strip()),
    ]
    print(f"wrote {write_rows('train_speed', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
