"""One bandit state for all replicas: an append-only stream of observations on Redis.

A linear bandit's state is a sum of per-observation terms (`policies.bandit`), so replicas share
it by sharing the *observations*, not by racing to overwrite matrices:

- feedback appends `(model, context, residual)` to the stream `moe:bandit:<policy>:<fingerprint>`
  (XADD: atomic, totally ordered, nothing lost to a concurrent writer);
- before routing, a replica reads the entries after its cursor (at most every `refresh_s`) and
  adds them to its statistics, its own included, so every replica that has read up to the same
  entry holds exactly the same state, whichever replica received the feedback;
- the stream stays bounded: once it holds `snapshot_every` entries, a replica that has just read
  all of it (so its statistics are exactly "everything up to the cursor") saves them as a
  snapshot and trims the stream up to that cursor, atomically in one Lua script that refuses an
  older snapshot. A replica that starts, or fell behind a trim, loads the snapshot and reads on.

Why not atomic in-place updates of A and b? A is (d+1)^2 floats per arm: HINCRBYFLOAT per cell
would be thousands of round trips per feedback. Why not periodic merges of local deltas? Correct
too, but the stream gives the same exact sums with less machinery and an audit trail.

The fingerprint (policy type, projection, prior, models) keeps a changed configuration from
reading statistics that meant something else. During a Redis outage feedback is applied locally
and kept; when Redis returns it is taken back out and appended, so it is counted exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("moe_router.state")


def fingerprint(policy: Any) -> str:
    # the encoder object and the abilities file's path are this host's: replicas that serve the
    # same configuration share statistics wherever their files live
    params = {k: v for k, v in policy.get_params().items() if k not in ("encoder", "abilities_file")}
    ident = {
        "type": policy.name,
        "params": params,
        "models": list(policy.models_),
        "prior": list(policy.prior_),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


class BanditState(Protocol):
    async def record(
        self, name: str, policy: Any, model: str, x: np.ndarray, y: float, sign: float = 1.0
    ) -> None:
        """Add (sign 1) or take back (sign -1, a replaced rating) one observation."""

    async def refresh(self, name: str, policy: Any, force: bool = False) -> None: ...


class MemoryBanditState:
    """One process: feedback updates the policy in place."""

    async def record(
        self, name: str, policy: Any, model: str, x: np.ndarray, y: float, sign: float = 1.0
    ) -> None:
        policy.update(model, x, y, sign=sign)

    async def refresh(self, name: str, policy: Any, force: bool = False) -> None:
        return None


# KEYS: snapshot hash, stream. ARGV: cursor, models (json), A, b, n (bytes).
# Saves the snapshot only if it is newer than the stored one, then trims what it covers.
_SNAPSHOT = """
local function newer(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local cur = redis.call('HGET', KEYS[1], 'cursor')
if cur and not newer(ARGV[1], cur) then return 0 end
redis.call('HSET', KEYS[1], 'cursor', ARGV[1], 'models', ARGV[2], 'A', ARGV[3], 'b', ARGV[4], 'n', ARGV[5])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[1])
return 1
"""


def _newer(a: str, b: str) -> bool:
    am, _, asq = a.partition("-")
    bm, _, bsq = b.partition("-")
    return (int(am), int(asq or 0)) > (int(bm), int(bsq or 0))


class _Cursor:
    def __init__(self) -> None:
        self.id = "0-0"
        self.last_refresh = float("-inf")
        self.pending: list[tuple[str, np.ndarray, float, float]] = []  # applied locally, not yet on Redis
        self.lock = asyncio.Lock()  # one reader at a time: an entry must be added exactly once


class RedisBanditState:
    def __init__(
        self,
        redis,
        outage,
        prefix: str = "moe:bandit:",
        refresh_s: float = 1.0,
        snapshot_every: int = 5000,
        batch: int = 1000,
        clock=time.monotonic,
    ):
        self.redis = redis
        self.outage = outage
        self.prefix = prefix
        self.refresh_s = refresh_s
        self.snapshot_every = snapshot_every
        self.batch = batch
        self._clock = clock
        self._cursors: dict[str, _Cursor] = {}
        self._snapshot = redis.register_script(_SNAPSHOT)

    def _keys(self, name: str, policy: Any) -> tuple[str, str]:
        base = f"{self.prefix}{name}:{fingerprint(policy)}"
        return base + ":stream", base + ":snapshot"

    @staticmethod
    def _entry(model: str, x: np.ndarray, y: float, sign: float = 1.0) -> dict[str, Any]:
        entry = {"m": model, "x": np.asarray(x, dtype="<f8").tobytes(), "y": repr(float(y))}
        if sign != 1.0:
            entry["s"] = repr(float(sign))
        return entry

    async def record(
        self, name: str, policy: Any, model: str, x: np.ndarray, y: float, sign: float = 1.0
    ) -> None:
        cur = self._cursors.setdefault(name, _Cursor())
        stream, _ = self._keys(name, policy)

        async def append() -> bool:
            await self.redis.xadd(stream, self._entry(model, x, y, sign))
            return True

        async def keep() -> bool:
            policy.update(model, x, y, sign=sign)  # learn locally now; appended when Redis is back
            cur.pending.append((model, np.asarray(x, dtype=float), float(y), float(sign)))
            return False

        if await self.outage.call("bandit_record", append, keep):
            await self.refresh(name, policy, force=True)

    async def refresh(self, name: str, policy: Any, force: bool = False) -> None:
        cur = self._cursors.setdefault(name, _Cursor())
        now = self._clock()
        if not force and now - cur.last_refresh < self.refresh_s:
            return
        cur.last_refresh = now

        async def down() -> None:
            return None

        async def sync() -> None:
            async with cur.lock:
                await self._sync(name, policy, cur)

        await self.outage.call("bandit_refresh", sync, down)

    async def _sync(self, name: str, policy: Any, cur: _Cursor) -> None:
        stream, snap = self._keys(name, policy)
        if cur.pending:  # feedback taken during an outage: append it, then count it from the stream
            kept = list(cur.pending)
            pipe = self.redis.pipeline(transaction=True)
            for model, x, y, sign in kept:
                pipe.xadd(stream, self._entry(model, x, y, sign))
            await pipe.execute()
            for model, x, y, sign in kept:
                policy.update(model, x, y, sign=-sign)
            del cur.pending[: len(kept)]
        snap_cursor = await self.redis.hget(snap, "cursor")
        if snap_cursor is not None and _newer(snap_cursor.decode(), cur.id):
            await self._load_snapshot(snap, policy, cur)
        while True:
            got = await self.redis.xread({stream: cur.id}, count=self.batch)
            entries = got[0][1] if got else []
            for entry_id, fields in entries:
                model = fields[b"m"].decode()
                if model in policy.models_:
                    sign = float(fields.get(b"s", 1.0))
                    policy.update(
                        model, np.frombuffer(fields[b"x"], dtype="<f8"), float(fields[b"y"]), sign=sign
                    )
                cur.id = entry_id.decode()
            if len(entries) < self.batch:
                break
        if await self.redis.xlen(stream) >= self.snapshot_every:
            st = policy.state()
            await self._snapshot(
                keys=[snap, stream],
                args=[
                    cur.id,
                    json.dumps(list(policy.models_)),
                    *(np.ascontiguousarray(st[k], dtype="<f8").tobytes() for k in ("A", "b", "n")),
                ],
            )

    async def _load_snapshot(self, snap: str, policy: Any, cur: _Cursor) -> None:
        h = await self.redis.hgetall(snap)
        if json.loads(h[b"models"]) != list(policy.models_):
            log.warning("bandit snapshot %s is for other models; ignoring it", snap)
            return
        shapes = {k: v.shape for k, v in policy.state().items()}
        policy.load_state(
            {k: np.frombuffer(h[k.encode()], dtype="<f8").reshape(shapes[k]) for k in ("A", "b", "n")}
        )
        for model, x, y, sign in cur.pending:
            policy.update(model, x, y, sign=sign)
        cur.id = h[b"cursor"].decode()
