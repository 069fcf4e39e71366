"""Search answers cached in Redis for POSTCODE_CACHE_TTL seconds.

A key names the data set's package version, so a release with new data never reads an older one's
answers. Redis is a cache here, not a dependency: when it fails, searches are answered from
PostgreSQL uncached (and logged), and caching resumes when it is back, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis

from fdservice import logs

from .config import Settings

log = logging.getLogger("postcode.cache")


def client(settings: Settings) -> "redis.Redis[bytes]":
    return redis.Redis.from_url(settings.redis_url, username=settings.redis_username,
                                password=settings.redis_password, socket_timeout=1, socket_connect_timeout=1,
                                health_check_interval=30)


def key(data_version: str, kind: str, text: str, country: str | None, limit: int) -> str:
    digest = hashlib.sha256(json.dumps([kind, text.casefold(), country, limit]).encode()).hexdigest()[:32]
    return f"postcode:{data_version}:search:{digest}"


def get(redis_client: "redis.Redis[bytes]", cache_key: str) -> Any | None:
    """The cached answer, None when absent; raises redis.RedisError when Redis fails."""
    cached = redis_client.get(cache_key)
    return None if cached is None else json.loads(cached)


def put(redis_client: "redis.Redis[bytes]", cache_key: str, value: Any, ttl: int) -> None:
    try:
        redis_client.set(cache_key, json.dumps(value, default=str), ex=ttl)
    except redis.RedisError as error:
        logs.event(log, "cache unavailable", logging.WARNING, error=str(error))
