"""Seeded negative sampling that does not depend on how users are partitioned.

Every random draw is a counter-based hash (splitmix64) of (seed, stream, user, slot, attempt),
vectorised in numpy. A user's negatives therefore depend only on the seed, the user's own history
and global item statistics, never on which worker or bucket processed the user: the Ray pipeline
and the single-process polars path give identical samples.

Rejection sampling: a slot whose candidate is in the user's history (or, for eval negatives,
repeats an item already chosen for that user) draws again with attempt+1; after MAX_ATTEMPTS the
few remaining slots are filled exactly from the user's complement (rarely needed: only for users
whose history covers most of the item mass).
"""

from __future__ import annotations

import numpy as np

MAX_ATTEMPTS = 64
EVAL_STREAM = 1
CTR_STREAM = 2
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays: a cheap, well-mixed hash (wraps on overflow)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, stream: int, users: np.ndarray, slots: np.ndarray, attempt: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per (user, slot), reproducible for a fixed key."""
    with np.errstate(over="ignore"):
        h = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLD + np.uint64(stream))
        h = splitmix64(h ^ (users.astype(np.uint64) * _GOLD))
        h = splitmix64(h ^ (slots.astype(np.uint64) * _M1 + np.uint64(attempt) * _M2))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _in_sorted(codes: np.ndarray, sorted_codes: np.ndarray) -> np.ndarray:
    if sorted_codes.size == 0:
        return np.zeros(codes.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_codes, codes), sorted_codes.size - 1)
    return sorted_codes[pos] == codes


def history_codes(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Sorted unique user*(num_items+1)+item codes of every (user, item) in the histories."""
    return np.unique(users.astype(np.int64) * (num_items + 1) + items.astype(np.int64))


def sample(
    users: np.ndarray,
    slots: np.ndarray,
    hist: np.ndarray,
    num_items: int,
    seed: int,
    stream: int,
    cdf: np.ndarray | None = None,
    distinct: bool = False,
) -> np.ndarray:
    """One item (1..num_items) per (users[s], slots[s]) never in that user's history.

    cdf: cumulative item weights over items 1..N (length N) for popularity sampling; None = uniform.
    distinct: items must also differ among the slots of the same user (eval negatives)."""
    n = users.shape[0]
    out = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    base = num_items + 1
    for attempt in range(MAX_ATTEMPTS):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            break
        u = uniform(seed, stream, users[todo], slots[todo], attempt)
        if cdf is None:
            cand = np.minimum((u * num_items).astype(np.int64), num_items - 1) + 1
        else:
            cand = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), num_items - 1) + 1
        out[todo] = cand
        ok = np.zeros(n, dtype=bool)
        ok[done] = True
        ok[todo] = ~_in_sorted(users[todo].astype(np.int64) * base + cand, hist)
        if distinct:
            # keep the first occurrence of each (user, item): already accepted slots first, then by slot order
            idx = np.flatnonzero(ok)
            prio = np.where(done[idx], 0, 1)
            order = idx[np.lexsort((idx, prio))]
            codes = users[order].astype(np.int64) * base + out[order]
            _, first = np.unique(codes, return_index=True)
            keep = np.zeros(n, dtype=bool)
            keep[order[first]] = True
            ok = keep
        done = ok
    if not done.all():
        _fill_exact(out, done, users, slots, hist, num_items, seed, stream, cdf, distinct)
    return out


def _fill_exact(out, done, users, slots, hist, num_items, seed, stream, cdf, distinct) -> None:
    """Fill the remaining slots from each user's exact complement (weights from cdf)."""
    base = num_items + 1
    all_items = np.arange(1, num_items + 1, dtype=np.int64)
    weights = None if cdf is None else np.diff(np.concatenate([[0.0], cdf]))
    for user in np.unique(users[~done]):
        mine = np.flatnonzero(users == user)
        seen = hist[(hist >= user * base) & (hist < (user + 1) * base)] - user * base
        taken = out[mine[done[mine]]] if distinct else np.empty(0, np.int64)
        allowed = np.setdiff1d(all_items, np.concatenate([seen, taken]))
        todo = mine[~done[mine]]
        w = None if weights is None else weights[allowed - 1]
        if allowed.size == 0 or (distinct and allowed.size < todo.size) or (w is not None and w.sum() <= 0):
            raise ValueError(
                f"user {user}: cannot draw {todo.size} negative(s): the user interacted with {seen.size} of {num_items} items"
            )
        u = uniform(seed, stream, np.full(todo.size, user), slots[todo], MAX_ATTEMPTS)
        if distinct:
            rank = np.argsort(uniform(seed, stream, np.full(allowed.size, user), allowed, MAX_ATTEMPTS + 1), kind="stable")
            out[todo] = allowed[rank[: todo.size]]
        else:
            c = np.cumsum(w) if w is not None else np.arange(1, allowed.size + 1, dtype=np.float64)
            out[todo] = allowed[np.minimum(np.searchsorted(c, u * c[-1], side="right"), allowed.size - 1)]
        done[todo] = True


def eval_negatives(
    user_ids: np.ndarray, offsets: np.ndarray, items: np.ndarray, num_items: int, num_negatives: int, seed: int
) -> np.ndarray:
    """[U, num_negatives] distinct items per user, uniform over items the user never interacted with."""
    lengths = np.diff(offsets)
    hist = history_codes(np.repeat(user_ids, lengths), items, num_items)
    users = np.repeat(user_ids, num_negatives)
    slots = np.tile(np.arange(num_negatives, dtype=np.int64), user_ids.shape[0])
    out = sample(users, slots, hist, num_items, seed, EVAL_STREAM, cdf=None, distinct=True)
    return out.reshape(user_ids.shape[0], num_negatives)
