"""API keys: the raw key is shown once; only a salted hash is stored.

A key looks like `sk-mr-<id>-<secret>`: `id` (public, 12 hex) finds the record, `secret`
(256 random bits) is checked against `sha256(salt || secret)` in constant time. A fast hash is
enough because the secret is random, not a password: it cannot be guessed from its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "sk-mr-"
WINDOWS = ("daily", "monthly", "total")
# names appear in logs, ledgers, metrics and Redis keys: printable, no separators, no wildcards
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"invalid key name {name!r}: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass
class KeyRecord:
    id: str
    name: str
    salt: str
    hash: str
    created: float = field(default_factory=time.time)
    budget_usd: float | None = None
    budget_window: str = "monthly"
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    models: list[str] | None = None  # None: every model
    team: str | None = None
    revoked: bool = False

    def verify(self, secret: str) -> bool:
        return not self.revoked and hmac.compare_digest(self.hash, hash_secret(self.salt, secret))

    def public(self) -> dict[str, Any]:
        """Everything but the salt and hash (for listings)."""
        d = asdict(self)
        del d["salt"], d["hash"]
        return d

    def to_fields(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict) -> KeyRecord:
        d = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in fields.items()}
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def hash_secret(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_key(
    name: str,
    *,
    budget_usd: float | None = None,
    budget_window: str = "monthly",
    rpm: int | None = None,
    tpm: int | None = None,
    models: list[str] | None = None,
    team: str | None = None,
) -> tuple[str, KeyRecord]:
    """(raw key, record to store). The raw key is never stored."""
    check_name(name)
    if budget_window not in WINDOWS:
        raise ValueError(f"budget window must be one of {', '.join(WINDOWS)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    rec = KeyRecord(
        id=key_id,
        name=name,
        salt=salt,
        hash=hash_secret(salt, secret),
        budget_usd=budget_usd,
        budget_window=budget_window,
        rpm=rpm,
        tpm=tpm,
        models=list(models) if models else None,
        team=team,
    )
    return f"{PREFIX}{key_id}-{secret}", rec


def parse_key(raw: str) -> tuple[str, str] | None:
    """(id, secret) from a raw key, or None when it is not one of ours."""
    if not raw.startswith(PREFIX):
        return None
    key_id, sep, secret = raw[len(PREFIX) :].partition("-")
    if not sep or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


# what `update` may change: limits and scope, never the identity (id, name, salt, hash, created)
MUTABLE = ("budget_usd", "budget_window", "rpm", "tpm", "models", "team")


class KeyStore:
    """Interface: `put` (refuses a taken name), `get` by id, `find` by name, `all`, `revoke` by name,
    `update` by name (the `MUTABLE` fields of an active key)."""

    async def put(self, rec: KeyRecord) -> None: ...
    async def get(self, key_id: str) -> KeyRecord | None: ...
    async def find(self, name: str) -> KeyRecord | None: ...
    async def all(self) -> list[KeyRecord]: ...
    async def revoke(self, name: str) -> KeyRecord | None: ...
    async def update(self, name: str, changes: dict[str, Any]) -> KeyRecord | None: ...


def _check_changes(changes: dict[str, Any]) -> None:
    bad = sorted(set(changes) - set(MUTABLE))
    if bad:
        raise ValueError(f"key fields that cannot be changed: {', '.join(bad)}")


class MemoryKeys(KeyStore):
    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}
        self._by_name: dict[str, str] = {}

    async def put(self, rec: KeyRecord) -> None:
        if rec.name in self._by_name:
            raise ValueError(f"a key named {rec.name!r} already exists")
        self._by_id[rec.id] = rec
        self._by_name[rec.name] = rec.id

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    async def find(self, name: str) -> KeyRecord | None:
        key_id = self._by_name.get(name)
        return self._by_id.get(key_id) if key_id else None

    async def all(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: r.created)

    async def revoke(self, name: str) -> KeyRecord | None:
        key_id = self._by_name.pop(name, None)
        if key_id is None:
            return None
        self._by_id[key_id].revoked = True
        return self._by_id[key_id]

    async def update(self, name: str, changes: dict[str, Any]) -> KeyRecord | None:
        _check_changes(changes)
        rec = await self.find(name)
        if rec is None:
            return None
        for k, v in changes.items():
            setattr(rec, k, v)
        return rec


class RedisKeys(KeyStore):
    """`moe:key:<id>` hash (JSON fields), `moe:keyname:<name>` -> id (unique names), `moe:keys` set of ids."""

    def __init__(self, redis, prefix: str = "moe:"):
        self.redis = redis
        self.p = prefix

    def key_of(self, key_id: str) -> str:
        """Key layout: the hash holding key `key_id`'s record."""
        return f"{self.p}key:{key_id}"

    async def put(self, rec: KeyRecord) -> None:
        if not await self.redis.set(f"{self.p}keyname:{rec.name}", rec.id, nx=True):
            raise ValueError(f"a key named {rec.name!r} already exists")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}key:{rec.id}", mapping=rec.to_fields())
            pipe.sadd(f"{self.p}keys", rec.id)
            await pipe.execute()

    async def get(self, key_id: str) -> KeyRecord | None:
        fields = await self.redis.hgetall(f"{self.p}key:{key_id}")
        return KeyRecord.from_fields(fields) if fields else None

    async def find(self, name: str) -> KeyRecord | None:
        key_id = await self.redis.get(f"{self.p}keyname:{name}")
        return await self.get(key_id.decode()) if key_id else None

    async def all(self) -> list[KeyRecord]:
        ids = sorted(i.decode() for i in await self.redis.smembers(f"{self.p}keys"))
        recs = [await self.get(i) for i in ids]
        return sorted((r for r in recs if r), key=lambda r: r.created)

    async def revoke(self, name: str) -> KeyRecord | None:
        rec = await self.find(name)
        if rec is None:
            return None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}key:{rec.id}", "revoked", "true")
            pipe.delete(f"{self.p}keyname:{name}")
            await pipe.execute()
        rec.revoked = True
        return rec

    async def update(self, name: str, changes: dict[str, Any]) -> KeyRecord | None:
        """One HSET of the changed fields (atomic); a revoked key has no name and is not found."""
        _check_changes(changes)
        rec = await self.find(name)
        if rec is None or rec.revoked:
            return None
        if changes:
            await self.redis.hset(
                f"{self.p}key:{rec.id}", mapping={k: json.dumps(v) for k, v in changes.items()}
            )
        for k, v in changes.items():
            setattr(rec, k, v)
        return rec
