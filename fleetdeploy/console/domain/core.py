"""The console's state, which every area of the domain (auth, admin, launch, reads, alerts) works on."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleetdeploy.console.config import Config
from fleetdeploy.console.db import AuditEntry, Job, make_engine
from fleetdeploy.console.domain.registry import RegistryClient
from fleetdeploy.console.runner.manager import JobManager
from fleetdeploy.console.runner.notify import Notifier
from fleetdeploy.console.security import LoginLimiter

# Ids are 32-bit integers in the database (PostgreSQL's INTEGER).
MAX_ID = 2**31 - 1


class Core:
    """The configuration, the database's sessions, the job manager (the runner), the registry and the
    sign-in limiter; and the audit log, which every change of state writes to."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = make_engine(config.database)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        self.notifier = Notifier(config.webhook_url)
        self.jobs = JobManager(config, self.sessions, self.notifier, on_expired=self._record_expiry)
        self.registry = RegistryClient(config.registry) if config.registry else None
        self.limiter = LoginLimiter(config.login_attempts, config.login_window_seconds)

    def audit(self, db: Session, actor: str, what: str, target: str = "", ip: str | None = None,
              **detail: Any) -> None:
        db.add(AuditEntry(actor=actor, action=what, target=target, detail=detail, ip=ip))

    def _record_expiry(self, db: Session, job: Job) -> None:
        """A pending job nobody approved in time (the runner's timer expired it): audited as the console's."""
        self.audit(db, "console", "job_expire", f"job {job.id}", environment=job.environment, action=job.action,
                   release=job.release)
