"""Alertmanager's webhook: firing alerts stored, resolved ones closed; the dashboard shows the firing ones."""

from __future__ import annotations

import json
from typing import Any

from fleetdeploy.console.db import Alert, now
from fleetdeploy.console.domain.core import Core
from fleetdeploy.console.domain.errors import ConsoleError


class Alerts(Core):
    """Alertmanager's webhook (version 4), as the API receives it."""

    def receive_alerts(self, payload: dict[str, Any]) -> int:
        """Store an Alertmanager webhook (version 4): firing alerts upserted, resolved ones closed."""
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise ConsoleError(422, "not an Alertmanager webhook: no 'alerts' list")
        common = payload.get("commonLabels") or {}
        with self.sessions() as db:
            for item in alerts:
                if not isinstance(item, dict) or not isinstance(item.get("labels", {}), dict):
                    raise ConsoleError(422, "each alert needs a 'labels' object")
                labels = {**common, **(item.get("labels") or {})}
                fingerprint = str(item.get("fingerprint") or json.dumps(labels, sort_keys=True))[:128]
                annotations = item.get("annotations") or {}
                db.merge(Alert(
                    fingerprint=fingerprint,
                    status="resolved" if item.get("status") == "resolved" else "firing",
                    name=str(labels.get("alertname", "alert"))[:255],
                    environment=_clip(labels.get("environment") or labels.get("env"), 64),
                    severity=_clip(labels.get("severity"), 32),
                    summary=str(annotations.get("summary") or annotations.get("description") or "")[:2000],
                    labels=labels, starts_at=_clip(item.get("startsAt"), 40), ends_at=_clip(item.get("endsAt"), 40),
                    updated_at=now(),
                ))
            db.commit()
        return len(alerts)


def _clip(value: Any, length: int) -> str | None:
    """A webhook's value cut to its column's length (PostgreSQL refuses longer strings; SQLite never checked)."""
    return None if value is None else str(value)[:length]


def alert_dict(a: Alert) -> dict[str, Any]:
    return {"fingerprint": a.fingerprint, "status": a.status, "name": a.name, "environment": a.environment,
            "severity": a.severity, "summary": a.summary, "starts_at": a.starts_at}
