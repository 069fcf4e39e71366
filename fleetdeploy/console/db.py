"""The console's tables (SQLAlchemy 2) and the engine. The schema itself is made by Alembic migrations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    false,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest revision in migrations/versions (a test keeps the two in step).
HEAD = "0005"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    # None: every environment; else the names this user may act on.
    environments: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # SHA-256 of the token: a token is 32 random bytes, so a fast hash is enough and lookups stay O(1).
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    environments: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class WebSession(Base):
    __tablename__ = "sessions"
    # SHA-256 of the cookie value: a stolen database does not yield live sessions.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    playbook: Mapped[str] = mapped_column(String(512))
    release: Mapped[str | None] = mapped_column(String(128), nullable=True)
    service: Mapped[str | None] = mapped_column(String(64), nullable=True)
    extra_vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    launched_by: Mapped[str] = mapped_column(String(64))
    # One of status.ALL (where the names and their order are written down).
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    rc: Mapped[int | None] = mapped_column(Integer, nullable=True)
    canceled_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    explanation: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The grid, per-host results and the recap, kept once the job ends so reading it needs no replay.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    events_pruned: Mapped[bool] = mapped_column(Boolean, default=False)
    # The playbook's process group and its leader's identity (boot id and start time), so a console
    # restarted after a crash stops the group only if that process is still the one it started.
    pgid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    process_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The job this one relaunches (same action, release and extra vars), and for a retry of the failed
    # hosts only, the hosts it was limited to (`--limit`); None: a fresh launch on every host.
    relaunch_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    limit_hosts: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # What the launch asked of ansible-playbook where its action allows it (config.LAUNCH_OPTIONS): a host
    # pattern for --limit (a retry's limit_hosts, when set, is what runs), --check and --diff.
    limit_pattern: Mapped[str | None] = mapped_column(String(512), nullable=True)
    check_mode: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    diff_mode: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A pending job expires at approval_deadline; decided_by approved or rejected it.
    approval_deadline: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    counter: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # The redacted event as the browser gets it.
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (Index("ix_job_events_job_counter", "job_id", "counter"),)


class Release(Base):
    """What release of a service a host runs, as the last successful deploy or rollback on it left it."""

    __tablename__ = "releases"
    environment: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    release: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class Alert(Base):
    __tablename__ = "alerts"
    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(255))
    environment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    severity: Mapped[str | None] = mapped_column(String(32), nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    starts_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    ends_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=now, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)


def job_dict(job: Job) -> dict[str, Any]:
    """A job as the API, the pages and the notifications show it."""
    return {
        "id": job.id, "environment": job.environment, "action": job.action, "release": job.release,
        "service": job.service, "extra_vars": job.extra_vars, "launched_by": job.launched_by,
        "status": job.status, "rc": job.rc, "canceled_by": job.canceled_by, "explanation": job.explanation,
        "created_at": job.created_at.isoformat(timespec="seconds"),
        "started_at": job.started_at.isoformat(timespec="seconds") if job.started_at else None,
        "finished_at": job.finished_at.isoformat(timespec="seconds") if job.finished_at else None,
        "relaunch_of": job.relaunch_of, "limit": job.limit_hosts,
        "limit_pattern": job.limit_pattern, "check": job.check_mode, "diff": job.diff_mode,
        "approval_deadline": job.approval_deadline.isoformat(timespec="seconds") if job.approval_deadline else None,
        "decided_by": job.decided_by,
    }


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def make_engine(url: str) -> Engine:
    _ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the event writer and the web requests work side by side.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """Bring the database to the newest schema (Alembic upgrade head)."""
    _ensure_sqlite_dir(url)
    if current_revision(url) == HEAD:
        return  # importing Alembic costs a second or more of start-up: only when there is work
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
