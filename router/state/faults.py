"""What a failed Redis call means: an outage (Redis cannot be reached, or refused to run the
command), an unknown outcome (the command was sent and its answer never came), or a fault (Redis
answered with an error: a bug or a misconfiguration).

A timeout is an outage *and* an unknown outcome: Redis may have run the command and only the
answer was lost (a stalled Redis runs what it had queued once it is free). Writes that carry an id
are therefore asked again with the same id (router.state.admission), never applied a second time.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def is_busy(e: BaseException) -> bool:
    """Redis refused the command while a script ran past `busy-reply-threshold`: not run."""
    return isinstance(e, ResponseError) and str(e).startswith("BUSY")


def is_outage(e: BaseException) -> bool:
    """Does `e` mean Redis cannot be reached (as opposed to Redis answering with an error)?"""
    if isinstance(
        e,
        RedisConnectionError
        | RedisTimeoutError
        | BusyLoadingError
        | ReadOnlyError
        | OSError
        | EOFError
        | asyncio.IncompleteReadError,
    ) or is_busy(e):
        return True
    # asyncio raises RuntimeError when a write meets a transport the peer already closed
    return isinstance(e, RuntimeError) and any(w in str(e).lower() for w in ("transport", "closed"))


def is_stall(e: BaseException) -> bool:
    """A slow Redis rather than a gone one: its answer timed out, or it was busy with a script.
    Worth asking again at once (with the same id) rather than switching to outage behaviour."""
    return isinstance(e, RedisTimeoutError | TimeoutError) or is_busy(e)
