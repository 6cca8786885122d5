"""Redis store for several replicas (redis-py). Each user's retained history is one string of
fixed 24-byte records (item, category, timestamp as little-endian int64), so a 10,000-event
history is one GET and one `np.frombuffer`. Appends are one Lua script per request: refuse ids stored
with another payload, dedupe on event id (SET NX of the payload, expiring after `event_id_ttl_s`:
the idempotency window), append (a late event is inserted at its timestamp's place and recorded
in `r:<user>`), bump seq, evict the oldest beyond `max_history` - atomic on the server.

Durability of acknowledged events is the server's: run redis-server with `appendonly yes` and
`appendfsync always` (the tests do) so a reply means the AOF was fsync'ed.
"""

from __future__ import annotations

import numpy as np
import redis

from serving.store.base import (
    DEFAULT_EVENT_ID_TTL_S,
    AppendResult,
    Event,
    EventIdConflict,
    History,
    StateBlob,
    UserStore,
    payload_key,
)

RECORD = np.dtype([("item", "<i8"), ("cat", "<i8"), ("ts", "<i8")])  # 24 bytes

_APPEND = """
local p = ARGV[1]; local cap = tonumber(ARGV[2]) * 24; local n = tonumber(ARGV[3]); local ttl_ms = tonumber(ARGV[4])
local function arg(i, k) return ARGV[5 + 5 * i + k] end  -- k: 0 id, 1 user, 2 record, 3 timestamp, 4 payload
-- first pass: ids stored (or repeated in this request) with another payload refuse the whole request
local seen = {}; local conflicts = {}
for i = 0, n - 1 do
  local eid, key = arg(i, 0), arg(i, 4)
  local prev = seen[eid]
  if prev == nil then prev = redis.call('GET', p .. 'e:' .. eid) end
  if prev and string.sub(prev, 1, 3) == 'v2|' and prev ~= key then conflicts[#conflicts + 1] = eid end
  if seen[eid] == nil then seen[eid] = prev or key end
end
if #conflicts > 0 then table.insert(conflicts, 1, 'conflict'); return conflicts end
local out = {}; local touched = {}
for i = 0, n - 1 do
  local eid, uid, rec, ts, key = arg(i, 0), arg(i, 1), arg(i, 2), tonumber(arg(i, 3)), arg(i, 4)
  local fresh
  if ttl_ms > 0 then fresh = redis.call('SET', p .. 'e:' .. eid, key, 'NX', 'PX', ttl_ms)
  else fresh = redis.call('SET', p .. 'e:' .. eid, key, 'NX') end
  if fresh then
    local k = p .. 'h:' .. uid
    local seq = redis.call('INCR', p .. 's:' .. uid)
    local m = redis.call('GET', p .. 'm:' .. uid)
    if m and ts < tonumber(m) then
      -- a late event: placed by its timestamp, after equal timestamps (ties keep arrival order)
      local h = redis.call('GET', k) or ''
      local pos = #h / 24
      while pos > 0 and struct.unpack('<i8', h, (pos - 1) * 24 + 17) > ts do pos = pos - 1 end
      redis.call('SET', k, string.sub(h, 1, pos * 24) .. rec .. string.sub(h, pos * 24 + 1))
      redis.call('SET', p .. 'r:' .. uid, seq)
    else
      redis.call('APPEND', k, rec)
      redis.call('SET', p .. 'm:' .. uid, arg(i, 3))
    end
    redis.call('SADD', p .. 'users', uid)
    touched[uid] = true
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for uid, _ in pairs(touched) do
  local k = p .. 'h:' .. uid
  local len = redis.call('STRLEN', k)
  if len > cap then redis.call('SET', k, string.sub(redis.call('GET', k), len - cap + 1)) end
end
return out
"""

_BULK = """
local p = ARGV[1]; local uid = ARGV[2]
if redis.call('EXISTS', p .. 's:' .. uid) == 1 then return 0 end
redis.call('SET', p .. 'h:' .. uid, ARGV[3]); redis.call('SET', p .. 's:' .. uid, ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', p .. 'm:' .. uid, ARGV[5]) end
redis.call('SADD', p .. 'users', uid)
return 1
"""

_PUT_STATE = """
local cur = redis.call('HGET', KEYS[1], 'seq')
if (not cur) or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'data', ARGV[2]); return 1
end
return 0
"""


class RedisStore(UserStore):
    def __init__(self, url: str, max_history: int = 10_000, prefix: str = "recsys:",
                 event_id_ttl_s: float | None = DEFAULT_EVENT_ID_TTL_S) -> None:
        self.max_history = max_history
        self.event_id_ttl_s = event_id_ttl_s
        self.prefix = prefix
        self._r = redis.Redis.from_url(url, socket_timeout=30.0)
        self._append = self._r.register_script(_APPEND)
        self._bulk = self._r.register_script(_BULK)
        self._put_state = self._r.register_script(_PUT_STATE)

    def append(self, events: list[Event]) -> AppendResult:
        result = AppendResult()
        if not events:
            return result
        ttl_ms = 0 if self.event_id_ttl_s is None else max(1, int(self.event_id_ttl_s * 1000))
        args: list[bytes | str | int] = [self.prefix, self.max_history, len(events), ttl_ms]
        for ev in events:
            rec = np.array([(ev.item_id, ev.category_id, ev.timestamp)], dtype=RECORD).tobytes()
            args += [ev.event_id, ev.user_id, rec, ev.timestamp, payload_key(ev)]
        flags = self._append(args=args)
        if flags and flags[0] == b"conflict":
            raise EventIdConflict([f.decode() for f in flags[1:]])
        for ev, flag in zip(events, flags):
            (result.stored if int(flag) == 1 else result.duplicates).append(ev.event_id)
        return result

    def bulk_load(self, user_id: int, items: np.ndarray, categories: np.ndarray, timestamps: np.ndarray) -> bool:
        recs = np.empty(np.asarray(items).size, dtype=RECORD)
        recs["item"], recs["cat"], recs["ts"] = items, categories, timestamps
        recs = recs[np.argsort(recs["ts"], kind="stable")]  # the build's order, kept
        total = recs.size
        max_ts = str(int(recs["ts"].max())) if total else ""
        return int(self._bulk(args=[self.prefix, user_id, recs[-self.max_history :].tobytes(), total, max_ts])) == 1

    def _read(self, user_id: int) -> tuple[int, int, np.ndarray]:
        """(seq, reorder seq, records in timestamp order) read atomically."""
        pipe = self._r.pipeline(transaction=True)
        pipe.get(f"{self.prefix}s:{user_id}")
        pipe.get(f"{self.prefix}r:{user_id}")
        pipe.get(f"{self.prefix}h:{user_id}")
        seq, reorder, blob = pipe.execute()
        return (int(seq) if seq else 0), (int(reorder) if reorder else 0), np.frombuffer(blob or b"", dtype=RECORD)

    @staticmethod
    def _history(recs: np.ndarray, seq: int, reorder: int) -> History:
        return History(recs["item"].copy(), recs["cat"].copy(), recs["ts"].copy(), seq, reorder)

    def history(self, user_id: int, max_len: int | None = None) -> History:
        seq, reorder, recs = self._read(user_id)
        return self._history(recs if max_len is None else recs[max(0, recs.size - max_len) :], seq, reorder)

    def history_since(self, user_id: int, since_seq: int) -> History:
        """The newest seq - since_seq events: exactly the events after since_seq unless a late
        event arrived since (`reordered_at` > since_seq; the caller then rebuilds)."""
        seq, reorder, recs = self._read(user_id)
        n = max(0, min(recs.size, seq - since_seq))
        return self._history(recs[recs.size - n :], seq, reorder)

    def seq(self, user_id: int) -> int:
        v = self._r.get(f"{self.prefix}s:{user_id}")
        return int(v) if v else 0

    def has_event(self, event_id: str) -> bool:
        return bool(self._r.exists(f"{self.prefix}e:{event_id}"))

    def get_state(self, user_id: int, model_key: str) -> StateBlob | None:
        seq, data = self._r.hmget(f"{self.prefix}st:{user_id}:{model_key}", ["seq", "data"])
        return StateBlob(int(seq), bytes(data)) if seq is not None and data is not None else None

    def put_state(self, user_id: int, model_key: str, blob: StateBlob) -> None:
        self._put_state(keys=[f"{self.prefix}st:{user_id}:{model_key}"], args=[blob.seq, blob.data])

    def num_users(self) -> int:
        return int(self._r.scard(f"{self.prefix}users"))

    def ping(self) -> bool:
        return bool(self._r.ping())

    def close(self) -> None:
        self._r.close()
