"""The web service's configuration: every setting comes from an environment variable, read and checked
once at start (README.md lists them). A missing or malformed value stops the process with one line
naming the variable, never a traceback that could carry a secret."""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn


class ConfigError(ValueError):
    """One or more environment variables are missing or malformed."""


def cannot_start(reason: object) -> NoReturn:
    """Stop the process on a problem no restart mends: one JSON line on stdout, exit 78 (EX_CONFIG).
    One write, one line: uWSGI's log master takes each write as one message."""
    sys.stdout.write(json.dumps({"level": "error", "logger": "fdweb.config", "msg": f"cannot start: {reason}"}) + "\n")
    sys.stdout.flush()
    sys.exit(78)


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    name: str
    user: str
    password: str


@dataclass(frozen=True)
class S3:
    endpoint_url: str | None  # None: AWS's own endpoint for the region
    region: str
    bucket: str
    static_bucket: str
    access_key: str | None  # None: boto3's default chain (an instance or task role in AWS)
    secret_key: str | None
    public_url: str  # where browsers fetch the static files: the static bucket's URL, or a CDN's


@dataclass(frozen=True)
class Config:
    secret_key: str
    debug: bool
    allowed_hosts: list[str]
    csrf_trusted_origins: list[str]
    secure_cookies: bool
    database: Database
    redis_url: str
    redis_password: str | None
    s3: S3
    tracking_url: str
    tracking_timeout: float
    release: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if env is None else env
        problems: list[str] = []

        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                problems.append(f"{name} is required")
            return value

        def number(name: str, default: str, kind: type[int] | type[float]) -> float:
            raw = env.get(name, default)
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{name} must be a number, got {raw!r}")
                return kind(default)
            if value <= 0:
                problems.append(f"{name} must be above 0, got {raw!r}")
            return value

        def words(name: str, default: str) -> list[str]:
            return [word for word in env.get(name, default).replace(",", " ").split() if word]

        secret_key = need("DJANGO_SECRET_KEY")
        if secret_key and len(secret_key) < 32:
            problems.append("DJANGO_SECRET_KEY must be at least 32 characters")

        database = None
        raw_db = need("DATABASE_URL")
        if raw_db:
            url = urllib.parse.urlsplit(raw_db)
            if url.scheme not in ("postgres", "postgresql") or not url.hostname or not url.path.strip("/"):
                problems.append("DATABASE_URL must be postgresql://USER@HOST[:PORT]/NAME")
            elif url.password:
                problems.append("DATABASE_URL must not carry the password: DATABASE_PASSWORD holds it")
            else:
                database = Database(host=url.hostname, port=url.port or 5432, name=url.path.strip("/"),
                                    user=urllib.parse.unquote(url.username or ""),
                                    password=env.get("DATABASE_PASSWORD", ""))

        redis_url = need("REDIS_URL")
        if redis_url:
            url = urllib.parse.urlsplit(redis_url)
            if url.scheme not in ("redis", "rediss") or not url.hostname:
                problems.append("REDIS_URL must be redis://[USER@]HOST[:PORT][/DB] or rediss://...")
            elif url.password:
                problems.append("REDIS_URL must not carry the password: REDIS_PASSWORD holds it")

        bucket = need("S3_BUCKET")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "eu-west-1"
        endpoint = env.get("S3_ENDPOINT_URL", "").rstrip("/") or None
        static_bucket = env.get("S3_STATIC_BUCKET", "") or bucket
        default_public = (f"{endpoint}/{static_bucket}" if endpoint
                          else f"https://{static_bucket}.s3.{region}.amazonaws.com")
        public_url = env.get("S3_PUBLIC_URL", "").rstrip("/") or default_public
        if urllib.parse.urlsplit(public_url).scheme not in ("http", "https"):
            problems.append("S3_PUBLIC_URL must be an http(s) URL")
        s3 = S3(endpoint_url=endpoint, region=region, bucket=bucket, static_bucket=static_bucket,
                access_key=env.get("AWS_ACCESS_KEY_ID") or None, secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                public_url=public_url)

        tracking_url = need("TRACKING_URL").rstrip("/")
        if tracking_url and urllib.parse.urlsplit(tracking_url).scheme not in ("http", "https"):
            problems.append("TRACKING_URL must be an http(s) URL")
        tracking_timeout = number("TRACKING_TIMEOUT", "3", float)

        log_level = env.get("LOG_LEVEL", "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            problems.append(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

        if problems:
            raise ConfigError("; ".join(problems))
        assert database is not None
        return cls(
            secret_key=secret_key,
            debug=env.get("DJANGO_DEBUG", "false").lower() == "true",
            allowed_hosts=words("ALLOWED_HOSTS", "localhost 127.0.0.1"),
            csrf_trusted_origins=words("CSRF_TRUSTED_ORIGINS", ""),
            secure_cookies=env.get("SESSION_COOKIE_SECURE", "true").lower() != "false",
            database=database,
            redis_url=redis_url,
            redis_password=env.get("REDIS_PASSWORD") or None,
            s3=s3,
            tracking_url=tracking_url,
            tracking_timeout=tracking_timeout,
            release=env.get("WEB_RELEASE", "unknown"),
            log_level=log_level,
        )
