"""Redis store for several replicas (redis-py). Each user's retained history is one string of
fixed 24-byte records (item, category, timestamp as little-endian int64), so a 10,000-event
history is one GET and one `np.frombuffer`. Appends are one Lua script per request: refuse ids stored
with another payload, dedupe on event id (SET NX of the payload, expiring after `event_id_ttl_s`:
the idempotency window), append (a late event is inserted at its timestamp's place and recorded
in `r:<user>`), bump the user's version, evict the oldest beyond `max_history` - atomic on the
server.

Keys per user (names predate the Python API and are kept so existing stores still open):
`s:<user>` holds the user's version (store/base.py: events ever appended), `r:<user>` its
`reordered_at`, `h:<user>` the records, `m:<user>` the newest timestamp; a state blob is the hash
`st:<user>:<model key>` whose field `seq` is the version the state reflects, `data` its bytes.

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

SCHEMA_VERSION = b"2"  # 2: records in timestamp order, `m:` newest timestamp and `r:` reordered_at per user
RECORD = np.dtype([("item", "<i8"), ("cat", "<i8"), ("ts", "<i8")])  # 24 bytes

# a user stored before timestamp order (records in arrival order, no `m:`): its records sorted by
# timestamp (stable), `m:` set to the newest, `r:` to version + 1 so every earlier state is rebuilt.
# Returns the newest timestamp (nil for a user without records). Run by the append script for such
# a user and, for all of them, once when a store is opened (`_migrate`).
_MIGRATE_FN = """
local function migrate(p, uid)
  local h = redis.call('GET', p .. 'h:' .. uid) or ''
  local n = #h / 24
  if n == 0 then return nil end
  local order = {}
  for i = 1, n do order[i] = {struct.unpack('<i8', h, (i - 1) * 24 + 17), i} end
  table.sort(order, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  local parts = {}
  for j = 1, n do local i = order[j][2]; parts[j] = string.sub(h, (i - 1) * 24 + 1, i * 24) end
  local newest = string.format('%d', order[n][1])
  redis.call('SET', p .. 'h:' .. uid, table.concat(parts))
  redis.call('SET', p .. 'm:' .. uid, newest)
  redis.call('SET', p .. 'r:' .. uid, tonumber(redis.call('GET', p .. 's:' .. uid) or '0') + 1)
  return newest
end
"""

_MIGRATE = _MIGRATE_FN + """
local p = ARGV[1]; local done = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', p .. 'm:' .. ARGV[i]) == 0 and migrate(p, ARGV[i]) then done = done + 1 end
end
return done
"""

_APPEND = _MIGRATE_FN + """
local p = ARGV[1]; local cap = tonumber(ARGV[2]) * 24; local n = tonumber(ARGV[3]); local ttl_ms = tonumber(ARGV[4])
local function arg(i, k) return ARGV[5 + 5 * i + k] end  -- k: 0 id, 1 user, 2 record, 3 timestamp, 4 payload
-- first pass: ids stored (or repeated in this request) with another payload refuse the whole request
local seen = {}; local conflicts = {}
for i = 0, n - 1 do
  local eid, key = arg(i, 0), arg(i, 4)
  local prev = seen[eid]
  if prev == nil then prev = redis.call('GET', p .. 'e:' .. eid) end
  if prev and string.sub(prev, 1, 3) == 'v2|' and prev ~= key then conflicts[#conflicts + 1] = tostring(i) end
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
    local m = redis.call('GET', p .. 'm:' .. uid)
    if not m then m = migrate(p, uid) end  -- nil: a new user; else one stored before timestamp order
    local version = redis.call('INCR', p .. 's:' .. uid)
    if m and ts < tonumber(m) then
      -- a late event: placed by its timestamp, after equal timestamps (ties keep arrival order)
      local h = redis.call('GET', k) or ''
      local pos = #h / 24
      while pos > 0 and struct.unpack('<i8', h, (pos - 1) * 24 + 17) > ts do pos = pos - 1 end
      redis.call('SET', k, string.sub(h, 1, pos * 24) .. rec .. string.sub(h, pos * 24 + 1))
      redis.call('SET', p .. 'r:' .. uid, version)
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
        self._migrate_users = self._r.register_script(_MIGRATE)
        self._migrate()

    def _migrate(self, chunk: int = 500) -> None:
        """Put users stored before timestamp order into it (see `_MIGRATE_FN`), once per store
        (`schema` key; idempotent, so replicas starting together are safe)."""
        if self._r.get(f"{self.prefix}schema") == SCHEMA_VERSION:
            return
        batch: list[bytes] = []
        for uid in self._r.sscan_iter(f"{self.prefix}users", count=chunk):
            batch.append(uid)
            if len(batch) == chunk:
                self._migrate_users(args=[self.prefix, *batch])
                batch = []
        if batch:
            self._migrate_users(args=[self.prefix, *batch])
        self._r.set(f"{self.prefix}schema", SCHEMA_VERSION)

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
            positions = [int(f) for f in flags[1:]]
            raise EventIdConflict([events[k].event_id for k in positions], positions)
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
        """(version, reordered_at, records in timestamp order) read atomically."""
        pipe = self._r.pipeline(transaction=True)
        pipe.get(f"{self.prefix}s:{user_id}")
        pipe.get(f"{self.prefix}r:{user_id}")
        pipe.get(f"{self.prefix}h:{user_id}")
        version, reorder, blob = pipe.execute()
        return (int(version) if version else 0), (int(reorder) if reorder else 0), np.frombuffer(blob or b"", dtype=RECORD)

    @staticmethod
    def _history(recs: np.ndarray, version: int, reorder: int) -> History:
        return History(recs["item"].copy(), recs["cat"].copy(), recs["ts"].copy(), version, reorder)

    def history(self, user_id: int, max_len: int | None = None) -> History:
        version, reorder, recs = self._read(user_id)
        return self._history(recs if max_len is None else recs[max(0, recs.size - max_len) :], version, reorder)

    def history_since(self, user_id: int, since_version: int) -> History:
        """The newest version - since_version events: exactly the events after since_version unless
        a late event arrived since (`reordered_at` > since_version; the caller then rebuilds)."""
        version, reorder, recs = self._read(user_id)
        n = max(0, min(recs.size, version - since_version))
        return self._history(recs[recs.size - n :], version, reorder)

    def version(self, user_id: int) -> int:
        v = self._r.get(f"{self.prefix}s:{user_id}")
        return int(v) if v else 0

    def has_event(self, event_id: str) -> bool:
        return bool(self._r.exists(f"{self.prefix}e:{event_id}"))

    def get_state(self, user_id: int, model_key: str) -> StateBlob | None:
        version, data = self._r.hmget(f"{self.prefix}st:{user_id}:{model_key}", ["seq", "data"])  # field `seq`: the version
        return StateBlob(int(version), bytes(data)) if version is not None and data is not None else None

    def put_state(self, user_id: int, model_key: str, blob: StateBlob) -> None:
        self._put_state(keys=[f"{self.prefix}st:{user_id}:{model_key}"], args=[blob.version, blob.data])

    def num_users(self) -> int:
        return int(self._r.scard(f"{self.prefix}users"))

    def ping(self) -> bool:
        return bool(self._r.ping())

    def close(self) -> None:
        self._r.close()
