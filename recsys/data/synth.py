"""Planted long-history CTR data (`recsys data synth`): a complete build directory whose ground
truth is known, so that retrieval over the long history can be measured, not guessed.

Generative model (docs/SYNTH.md has the full version with the defaults):

* World. K = num_categories * clusters_per_category interest clusters of m = items_per_cluster
  items each; item id `k*m + j + 1` (dense ids 1..K*m) belongs to cluster k and category
  `k // clusters_per_category + 1`. Every item has a unit latent vector z_i in R^latent_dim (its
  item-level "style", independent of its cluster) and a small click bias b_i. Clusters have
  Zipf popularity, items inside a cluster have Zipf popularity too.
* User u. A length L_u ~ lognormal(log(length_median), length_sigma) clipped to
  [min_length, max_length]; 2..4 long-term interests (distinct clusters) with a unit taste vector
  t_uj each; one short-term drift cluster (distinct from them) with taste t_ud.
* History. Position p is
  - a long-term behaviour (only deep: p < L_u - deep_offset; max(min_per_interest*I_u,
    Binomial(L_u - deep_offset, interest_rate)) such positions, spread round-robin over the interests):
    an item of interest j drawn with P(i) ~ exp(taste_sharpness * <z_i, t_uj>);
  - a drift behaviour (only recent: p >= L_u - drift_window, with probability drift_rate): an item of
    the drift cluster drawn the same way with t_ud;
  - otherwise noise: a popular item of a cluster that is none of the user's clusters.
  So the behaviours of a cluster in a history are exactly the planted ones.
* Samples. Train targets at prefix_length L_u - 2, valid at L_u - 1, test at L_u (history =
  items[:prefix_length]). A target is from a long-term interest (target_mix.long_term), the drift
  cluster (target_mix.drift) or another cluster (rest); the item is uniform within the cluster. Its click
  logit is bias + b_i + a * <z_t, t_uj> [long-term] + b * <z_t, t_ud> [drift] + N(0, label_noise^2),
  label ~ Bernoulli(sigmoid(logit)). The relevant history positions of a long-term or drift target are
  the positions < prefix_length whose item is in the target's cluster (all planted, since noise avoids
  the user's clusters); an "other" target has none (its label ignores the history).

Why this is the task the models are meant for: a long-term target's signal is carried by a few
behaviours at least `deep_offset` positions back (DIN over the recent 50 cannot see them); which
behaviours matter is decided by cluster/category (attention), while the label needs the item-level
latent z (representation) that is independent of the cluster: the decoupled-embedding setting.
No model's result is encoded anywhere: only the data are generated.

Memory: users are generated in chunks of `chunk_users` and streamed to parquet writers, so the peak
is one chunk (10^6 users fit). Deterministic for (config, seed): chunk c uses the RNG seeded with
(seed, 1, c), the world uses (seed, 0).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from recsys.artifacts import sha256_file
from recsys.config import StrictModel, config_hash
from recsys.data import layout, schema
from recsys.data.vocab import Vocabulary, write_vocabularies

log = logging.getLogger(__name__)

PLANTED_TRUTH_FILE = "planted_truth.parquet"
RELEVANT_POSITIONS = "relevant_positions"
TARGET_KIND = "target_kind"
CLICK_LOGIT = "click_logit"  # the label's noise-free logit: the Bayes-oracle score (docs/SYNTH.md)
KINDS = ("long_term", "drift", "other")
SPLIT_OFFSETS = {"train": 2, "valid": 1, "test": 0}  # prefix_length = L - offset


class TargetMix(StrictModel):
    long_term: float = Field(0.5, ge=0, le=1)
    drift: float = Field(0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _sum(self) -> "TargetMix":
        if self.long_term + self.drift > 1.0 + 1e-9:
            raise ValueError("target_mix: long_term + drift must be <= 1")
        return self


class SynthConfig(StrictModel):
    """Every knob of the generative model (see module docstring / docs/SYNTH.md)."""

    num_users: int = Field(10_000, ge=1)
    seed: int = 0
    # world
    num_categories: int = Field(250, ge=1)
    clusters_per_category: int = Field(2, ge=1)
    items_per_cluster: int = Field(100, ge=2)
    latent_dim: int = Field(4, ge=1)
    cluster_zipf: float = Field(0.8, ge=0)
    item_zipf: float = Field(0.8, ge=0)
    item_bias_std: float = Field(0.3, ge=0)
    # lengths (long-tailed)
    length_median: float = Field(300.0, gt=0)
    length_sigma: float = Field(1.0, ge=0)
    min_length: int = Field(150, ge=3)
    max_length: int = Field(10_000, ge=3)
    # long-term interests (deep, sparse)
    interests_min: int = Field(2, ge=1)
    interests_max: int = Field(4, ge=1)
    interest_rate: float = Field(0.03, ge=0, le=1)
    min_per_interest: int = Field(4, ge=1)
    deep_offset: int = Field(100, ge=0)
    taste_sharpness: float = Field(6.0, ge=0)
    # short-term drift (recent)
    drift_window: int = Field(30, ge=1)
    drift_rate: float = Field(0.5, ge=0, le=1)
    # targets and labels
    train_targets: int = Field(8, ge=0)
    valid_targets: int = Field(2, ge=0)
    test_targets: int = Field(2, ge=0)
    target_mix: TargetMix = TargetMix()
    long_term_weight: float = 5.0
    drift_weight: float = 3.0
    label_bias: float = -0.5
    label_noise: float = Field(0.5, ge=0)
    # mechanics
    mean_gap_seconds: float = Field(3600.0, gt=0)
    start_time: int = 1_500_000_000
    chunk_users: int = Field(2000, ge=1)

    @property
    def num_clusters(self) -> int:
        return self.num_categories * self.clusters_per_category

    @property
    def num_items(self) -> int:
        return self.num_clusters * self.items_per_cluster

    @model_validator(mode="after")
    def _consistent(self) -> "SynthConfig":
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must be <= max_length ({self.max_length})")
        if self.interests_min > self.interests_max:
            raise ValueError("interests_min must be <= interests_max")
        need = self.deep_offset + self.min_per_interest * self.interests_max + 2
        if self.min_length < need:
            raise ValueError(f"min_length must be >= deep_offset + min_per_interest*interests_max + 2 = {need}")
        if self.drift_window + 2 > self.min_length:
            raise ValueError("drift_window must be < min_length - 2")
        if self.num_clusters < self.interests_max + 2:
            raise ValueError("num_categories*clusters_per_category must exceed interests_max + 1")
        if self.num_items < 2 * schema.NUM_EVAL_NEGATIVES:
            raise ValueError(f"num_items ({self.num_items}) must be >= {2 * schema.NUM_EVAL_NEGATIVES} (eval negatives)")
        return self


@dataclass(frozen=True)
class World:
    """Item-side ground truth shared by all users."""

    cfg: SynthConfig
    latent: np.ndarray  # [N+1, d] unit vectors (row 0 = padding, zeros)
    bias: np.ndarray  # [N+1]
    cluster_logp: np.ndarray  # [K] log popularity
    item_p: np.ndarray  # [m] popularity of the j-th item inside a cluster

    def cluster_of(self, items: np.ndarray) -> np.ndarray:
        """Cluster 0..K-1 of dense item ids (>=1)."""
        return (np.asarray(items, dtype=np.int64) - 1) // self.cfg.items_per_cluster

    def category_of(self, items: np.ndarray) -> np.ndarray:
        return self.cluster_of(items) // self.cfg.clusters_per_category + 1


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def make_world(cfg: SynthConfig) -> World:
    """Item latents, biases and popularities (deterministic for cfg.seed)."""
    rng = np.random.default_rng([cfg.seed, 0])
    n, k, m = cfg.num_items, cfg.num_clusters, cfg.items_per_cluster
    latent = np.zeros((n + 1, cfg.latent_dim))
    latent[1:] = _unit(rng.standard_normal((n, cfg.latent_dim)))
    bias = np.zeros(n + 1)
    bias[1:] = rng.normal(0.0, cfg.item_bias_std, n)
    cluster_p = _zipf(k, cfg.cluster_zipf)[rng.permutation(k)]
    return World(cfg=cfg, latent=latent, bias=bias, cluster_logp=np.log(cluster_p), item_p=_zipf(m, cfg.item_zipf))


def _taste_items(world: World, rng: np.random.Generator, clusters: np.ndarray, tastes: np.ndarray,
                 block: int = 8192) -> np.ndarray:
    """For each event e: an item of cluster clusters[e] drawn with P ~ exp(sharpness*<z, tastes[e]>)
    (Gumbel-max, in blocks to bound memory)."""
    m = world.cfg.items_per_cluster
    out = np.empty(len(clusters), dtype=np.int64)
    for s in range(0, len(clusters), block):
        c = clusters[s : s + block]
        ids = c[:, None] * m + np.arange(1, m + 1)[None, :]  # [E, m]
        logits = world.cfg.taste_sharpness * np.einsum("emd,ed->em", world.latent[ids], tastes[s : s + block])
        g = rng.gumbel(size=logits.shape)
        out[s : s + block] = ids[np.arange(len(c)), np.argmax(logits + g, axis=1)]
    return out


def _other_clusters(world: World, rng: np.random.Generator, owner: np.ndarray, user_clusters: np.ndarray) -> np.ndarray:
    """Popularity-weighted clusters that are none of the owning user's clusters ([n] for owner rows)."""
    p = np.exp(world.cluster_logp)
    out = rng.choice(len(p), size=len(owner), p=p)
    bad = np.any(out[:, None] == user_clusters[owner], axis=1)
    while bad.any():
        out[bad] = rng.choice(len(p), size=int(bad.sum()), p=p)
        bad = np.any(out[:, None] == user_clusters[owner], axis=1)
    return out


@dataclass
class Chunk:
    sequences: pa.Table
    samples: pa.Table
    truth: pa.Table
    negatives: pa.Table
    lengths: np.ndarray


def generate_chunk(world: World, user_ids: np.ndarray, chunk_index: int) -> Chunk:
    """Users `user_ids` (dense ids): their histories, CTR samples, planted truth and eval negatives.
    The steps draw from one generator in a fixed order, so a chunk depends only on (seed, chunk)."""
    rng = np.random.default_rng([world.cfg.seed, 1, chunk_index])
    users = _draw_users(world, rng, len(user_ids))
    ev = _draw_events(world, rng, users)
    smp = _draw_samples(world, rng, users, ev)
    relevant = _planted_positions(world, ev, smp)
    negatives = _eval_negatives(rng, ev.row, ev.items, len(user_ids), world.cfg.num_items)
    return _chunk_tables(world, user_ids.astype(np.int64), users, ev, smp, relevant, negatives)


@dataclass
class _Users:
    lengths: np.ndarray  # [U] history length
    n_int: np.ndarray  # [U] number of long-term interests
    clusters: np.ndarray  # [U, I+1] drift cluster (col 0), interests (cols 1..I)
    tastes: np.ndarray  # [U, I+1, d]


@dataclass
class _Events:
    offsets: np.ndarray  # [U+1]
    row: np.ndarray  # [E] user row of each event
    pos: np.ndarray  # [E] position in the user's history
    items: np.ndarray  # [E]
    times: np.ndarray  # [E]
    cats: np.ndarray  # [E]
    masked_clusters: np.ndarray  # [U, I+1] the user's clusters, -1 beyond its interests


@dataclass
class _Samples:
    split: np.ndarray  # [S] train/valid/test
    srow: np.ndarray  # [S] user row
    prefix: np.ndarray  # [S] history length before the target
    kind: np.ndarray  # [S] 0 long-term, 1 drift, 2 other
    tcluster: np.ndarray  # [S] target cluster
    titem: np.ndarray  # [S] target item
    clean: np.ndarray  # [S] noise-free click logit
    label: np.ndarray  # [S] int8


def _draw_users(world: World, rng: np.random.Generator, u: int) -> _Users:
    """Length, interests (cols 1..I), drift cluster (col 0) and tastes of `u` users."""
    cfg, k, imax = world.cfg, world.cfg.num_clusters, world.cfg.interests_max
    lengths = np.rint(np.exp(rng.normal(np.log(cfg.length_median), cfg.length_sigma, u))).astype(np.int64)
    lengths = np.clip(lengths, cfg.min_length, cfg.max_length)
    n_int = rng.integers(cfg.interests_min, imax + 1, size=u)
    keys = world.cluster_logp[None, :] + rng.gumbel(size=(u, k))  # weighted sampling w/o replacement
    clusters = np.argsort(-keys, axis=1)[:, : imax + 1]  # [U, I+1]
    tastes = _unit(rng.standard_normal((u, imax + 1, cfg.latent_dim)))  # [U, I+1, d]
    return _Users(lengths, n_int, clusters, tastes)


def _draw_events(world: World, rng: np.random.Generator, us: _Users) -> _Events:
    """Every event of the users: planted long-term and drift behaviours, noise, times, categories."""
    cfg, m, imax = world.cfg, world.cfg.items_per_cluster, world.cfg.interests_max
    lengths, n_int = us.lengths, us.n_int
    u = len(lengths)
    offsets = np.zeros(u + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    e = int(offsets[-1])
    row = np.repeat(np.arange(u), lengths)
    pos = np.arange(e) - offsets[row]
    length_e = lengths[row]
    items = np.zeros(e, dtype=np.int64)

    # long-term behaviours: the n_lt deep positions with the smallest random key, per user
    deep = np.flatnonzero(pos < length_e - cfg.deep_offset)
    n_deep = lengths - cfg.deep_offset
    n_lt = np.maximum(cfg.min_per_interest * n_int, rng.binomial(n_deep, cfg.interest_rate))
    order = np.lexsort((rng.random(len(deep)), row[deep]))  # by user, then random
    ranked = deep[order]
    deep_start = np.zeros(u + 1, dtype=np.int64)
    np.cumsum(n_deep, out=deep_start[1:])
    rank = np.arange(len(ranked)) - deep_start[row[ranked]]
    is_lt = rank < n_lt[row[ranked]]
    lt_events = ranked[is_lt]
    lt_interest = 1 + rank[is_lt] % n_int[row[lt_events]]  # column in clusters / tastes
    items[lt_events] = _taste_items(world, rng, us.clusters[row[lt_events], lt_interest],
                                    us.tastes[row[lt_events], lt_interest])

    # drift behaviours: recent positions with probability drift_rate
    recent = pos >= length_e - cfg.drift_window
    drift_events = np.flatnonzero(recent & (rng.random(e) < cfg.drift_rate))
    items[drift_events] = _taste_items(world, rng, us.clusters[row[drift_events], 0], us.tastes[row[drift_events], 0])

    # noise: popular items of clusters that are none of the user's
    masked_clusters = np.where(np.arange(imax + 1)[None, :] <= n_int[:, None], us.clusters, -1)
    noise = np.flatnonzero(items == 0)
    nc = _other_clusters(world, rng, row[noise], masked_clusters)
    items[noise] = nc * m + 1 + rng.choice(m, size=len(noise), p=world.item_p)

    gaps = np.maximum(1, rng.exponential(cfg.mean_gap_seconds, e).astype(np.int64))
    csum = np.cumsum(gaps)
    times = cfg.start_time + csum - np.concatenate([[0], csum])[offsets[:-1]][row]
    return _Events(offsets, row, pos, items, times, world.category_of(items), masked_clusters)


def _draw_samples(world: World, rng: np.random.Generator, us: _Users, ev: _Events) -> _Samples:
    """CTR samples: per split and user, a target from a long-term interest, the drift cluster or
    another cluster, and its label drawn from the planted click model."""
    cfg, m = world.cfg, world.cfg.items_per_cluster
    u = len(us.lengths)
    per_split = [("train", cfg.train_targets), ("valid", cfg.valid_targets), ("test", cfg.test_targets)]
    split = np.concatenate([np.full(u * count, name, dtype=object) for name, count in per_split])
    srow = np.concatenate([np.repeat(np.arange(u), count) for _, count in per_split]).astype(np.int64)
    ns = len(srow)
    prefix = us.lengths[srow] - np.array([SPLIT_OFFSETS[s] for s in split], dtype=np.int64)
    r = rng.random(ns)
    mix = cfg.target_mix
    kind = np.where(r < mix.long_term, 0, np.where(r < mix.long_term + mix.drift, 1, 2))
    col = np.where(kind == 0, 1 + (rng.random(ns) * us.n_int[srow]).astype(np.int64), 0)
    tcluster = us.clusters[srow, col]
    other = kind == 2
    tcluster[other] = _other_clusters(world, rng, srow[other], ev.masked_clusters)
    titem = tcluster * m + 1 + rng.integers(0, m, size=ns)
    align = np.einsum("sd,sd->s", world.latent[titem], us.tastes[srow, col])
    weight = np.select([kind == 0, kind == 1], [cfg.long_term_weight, cfg.drift_weight], 0.0)
    clean = cfg.label_bias + world.bias[titem] + weight * align  # what an oracle knowing z, t and b can know
    logit = clean + rng.normal(0.0, cfg.label_noise, ns)
    label = (rng.random(ns) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    return _Samples(split, srow, prefix, kind, tcluster, titem, clean, label)


def _planted_positions(world: World, ev: _Events, smp: _Samples) -> pa.ListArray:
    """Per sample: the history positions < prefix whose item is in the target's cluster (none for
    an "other" target)."""
    k = world.cfg.num_clusters
    ekey = ev.row * k + world.cluster_of(ev.items)
    eorder = np.argsort(ekey, kind="stable")  # by (user, cluster), then position
    skey = smp.srow * k + smp.tcluster
    lo = np.searchsorted(ekey[eorder], skey, side="left")
    hi = np.searchsorted(ekey[eorder], skey, side="right")
    cnt = hi - lo
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(int(cnt.sum()))
    cand_pos = ev.pos[eorder[idx]]
    keep = (cand_pos < np.repeat(smp.prefix, cnt)) & np.repeat(smp.kind != 2, cnt)  # "other": nothing planted
    rel_counts = np.bincount(np.repeat(np.arange(len(smp.srow)), cnt)[keep], minlength=len(smp.srow))
    rel_offsets = np.concatenate([[0], np.cumsum(rel_counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(rel_offsets), pa.array(cand_pos[keep].astype(np.int64)))


def _chunk_tables(world: World, uid: np.ndarray, us: _Users, ev: _Events, smp: _Samples, relevant: pa.ListArray,
                  negatives: np.ndarray) -> Chunk:
    """The chunk's four Arrow tables (sequences, samples, planted truth, eval negatives)."""
    u = len(uid)
    off32 = pa.array(ev.offsets.astype(np.int32))
    sequences = pa.table({
        schema.USER: pa.array(uid),
        schema.SEQ_ITEMS: pa.ListArray.from_arrays(off32, pa.array(ev.items)),
        schema.SEQ_TIMES: pa.ListArray.from_arrays(off32, pa.array(ev.times.astype(np.int64))),
        schema.SEQ_CATEGORIES: pa.ListArray.from_arrays(off32, pa.array(ev.cats.astype(np.int64))),
    })
    split_arr = pa.array(smp.split.astype(str))
    prefix = pa.array(smp.prefix.astype(np.int32))
    samples = pa.table({
        schema.SPLIT: split_arr, schema.USER: pa.array(uid[smp.srow]), schema.PREFIX_LENGTH: prefix,
        schema.ITEM: pa.array(smp.titem), schema.CATEGORY: pa.array(world.category_of(smp.titem)),
        schema.LABEL: pa.array(smp.label),
    })
    truth = pa.table({
        schema.SPLIT: split_arr, schema.USER: pa.array(uid[smp.srow]), schema.PREFIX_LENGTH: prefix,
        schema.ITEM: pa.array(smp.titem), RELEVANT_POSITIONS: relevant,
        TARGET_KIND: pa.array(np.array(KINDS, dtype=object)[smp.kind].astype(str)),
        CLICK_LOGIT: pa.array(smp.clean.astype(np.float64)),
    })
    neg = pa.table({
        schema.USER: pa.array(uid),
        schema.NEGATIVES: pa.ListArray.from_arrays(
            pa.array(np.arange(0, (u + 1) * schema.NUM_EVAL_NEGATIVES, schema.NUM_EVAL_NEGATIVES, dtype=np.int32)),
            pa.array(negatives.reshape(-1))),
    })
    return Chunk(sequences=sequences, samples=samples, truth=truth, negatives=neg, lengths=us.lengths)


def _eval_negatives(rng: np.random.Generator, row: np.ndarray, items: np.ndarray, u: int, n_items: int) -> np.ndarray:
    """[U, NUM_EVAL_NEGATIVES] distinct items per user, none in that user's history (vectorised
    rejection; rows short of valid candidates are redrawn)."""
    need = schema.NUM_EVAL_NEGATIVES
    hist = np.unique(row * (n_items + 1) + items)
    distinct = np.bincount(hist // (n_items + 1), minlength=u)
    if distinct.max(initial=0) > n_items - need:
        raise ValueError(f"num_items ({n_items}) too small: a user has {distinct.max()} distinct items, leaving fewer "
                         f"than {need} eval negatives (raise num_categories/items_per_cluster)")
    out = np.zeros((u, need), dtype=np.int64)
    todo = np.arange(u)
    while len(todo):
        width = 3 * need
        cand = rng.integers(1, n_items + 1, size=(len(todo), width))
        key = todo[:, None] * (n_items + 1) + cand
        ok = ~np.isin(key, hist)
        _, first = np.unique(key, return_index=True)  # drop repeats within a row
        dup = np.ones(key.size, dtype=bool)
        dup[first] = False
        ok &= ~dup.reshape(key.shape)
        enough = ok.sum(axis=1) >= need
        rank = np.cumsum(ok, axis=1) - 1
        take = ok & (rank < need) & enough[:, None]
        rows_ok = todo[enough]
        out[rows_ok] = cand[enough][take[enough]].reshape(-1, need)
        todo = todo[~enough]
    return out


def generate(cfg: SynthConfig, output: str | Path) -> dict:
    """Write a complete build directory (recsys/data/layout.py parts, one per chunk of users, + planted_truth.parquet) to `output`;
    returns the manifest."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / schema.MANIFEST_FILE).unlink(missing_ok=True)  # unfinished until the new manifest is written
    for name in layout.PER_USER_TABLES:
        shutil.rmtree(out / name, ignore_errors=True)
    world = make_world(cfg)
    write_vocabularies({
        "users": Vocabulary(np.arange(1, cfg.num_users + 1)),
        "items": Vocabulary(np.arange(1, cfg.num_items + 1)),
        "categories": Vocabulary(np.arange(1, cfg.num_categories + 1)),
    }, out)
    writers: dict[str, pq.ParquetWriter] = {}
    lengths: list[np.ndarray] = []
    counts = {"events": 0, "samples": {s: 0 for s in SPLIT_OFFSETS}, "clicks": {s: 0 for s in SPLIT_OFFSETS},
              "target_kind": {k: 0 for k in KINDS}}
    starts = range(0, cfg.num_users, cfg.chunk_users)
    try:
        for c, start in enumerate(starts):
            ids = np.arange(start + 1, min(start + cfg.chunk_users, cfg.num_users) + 1)
            chunk = generate_chunk(world, ids, c)
            # one part per chunk of users (contiguous user ranges, in user order)
            for name, table in ((layout.SEQUENCES, chunk.sequences), (layout.CTR_SAMPLES, chunk.samples),
                                (layout.EVAL_NEGATIVES, chunk.negatives)):
                layout.write_part(table, out / name / layout.part_name(c))
            if PLANTED_TRUTH_FILE not in writers:
                writers[PLANTED_TRUTH_FILE] = pq.ParquetWriter(str(out / PLANTED_TRUTH_FILE), chunk.truth.schema)
            writers[PLANTED_TRUTH_FILE].write_table(chunk.truth)
            lengths.append(chunk.lengths)
            counts["events"] += int(chunk.lengths.sum())
            sp = chunk.samples[schema.SPLIT].to_numpy(zero_copy_only=False)
            lab = chunk.samples[schema.LABEL].to_numpy()
            for s in SPLIT_OFFSETS:
                counts["samples"][s] += int((sp == s).sum())
                counts["clicks"][s] += int(lab[sp == s].sum())
            kinds = chunk.truth[TARGET_KIND].to_numpy(zero_copy_only=False)
            for kname in KINDS:
                counts["target_kind"][kname] += int((kinds == kname).sum())
            log.info("synth: users %d..%d written", ids[0], ids[-1])
    finally:
        for w in writers.values():
            w.close()
    all_len = np.concatenate(lengths)
    manifest = {
        "source": "synth",
        "generator": "recsys.data.synth (planted long-history CTR; docs/SYNTH.md)",
        "config": cfg.model_dump(mode="json"),
        "config_hash": config_hash(cfg),
        "counts": {"users": cfg.num_users, **counts},
        "vocab_sizes": {"users": cfg.num_users, "items": cfg.num_items, "categories": cfg.num_categories},
        "length_stats": {"min": int(all_len.min()), "median": float(np.median(all_len)), "mean": float(all_len.mean()),
                         "p90": float(np.percentile(all_len, 90)), "p99": float(np.percentile(all_len, 99)),
                         "max": int(all_len.max())},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__},
        "layout": layout.layout_entry(len(starts), f"contiguous user ranges of chunk_users={cfg.chunk_users}"),
        "files": {str(f.relative_to(out)): sha256_file(f) for f in sorted(out.rglob("*.parquet"))},
    }
    tmp = out / (schema.MANIFEST_FILE + ".tmp")  # written last and atomically: a crash leaves no manifest
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / schema.MANIFEST_FILE)
    return manifest
