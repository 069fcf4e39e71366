"""Tell a chat channel when a job starts and ends: a Slack-compatible incoming webhook."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from fleetdeploy.console.status import (
    CANCELED,
    ERROR,
    EXPIRED,
    FAILED,
    INTERRUPTED,
    PENDING,
    REJECTED,
    RUNNING,
    SUCCESSFUL,
)

log = logging.getLogger(__name__)

ICON = {PENDING: ":hourglass:", RUNNING: ":rocket:", SUCCESSFUL: ":white_check_mark:", FAILED: ":x:",
        CANCELED: ":octagonal_sign:", INTERRUPTED: ":warning:", ERROR: ":boom:", REJECTED: ":no_entry:",
        EXPIRED: ":hourglass:"}


def _text(value: str) -> str:
    """Free text (a rejection's reason) as Slack shows it literally: its <...> would be links or mentions."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(job: dict[str, Any], base_url: str | None = None) -> dict[str, Any]:
    """The payload: `text` for Slack and anything Slack-compatible (Mattermost, Rocket.Chat, ...)."""
    what = f"{job['action']} of {job['environment']}"
    if job.get("release"):
        what += f" to {job['release']}"
    if job.get("check"):
        what += " in check mode (nothing changes)"
    verb = "started" if job["status"] == RUNNING else job["status"]
    link = f" <{base_url.rstrip('/')}/jobs/{job['id']}|job {job['id']}>" if base_url else f" (job {job['id']})"
    if job["status"] == PENDING:
        text = f"{ICON[PENDING]} {what} by {job['launched_by']} awaits another person's approval{link}"
    elif job["status"] == REJECTED:
        text = f"{ICON[REJECTED]} {what} by {job['launched_by']} {_text(job.get('explanation') or 'rejected')}{link}"
    elif job["status"] == EXPIRED:
        text = f"{ICON[EXPIRED]} {what} by {job['launched_by']} expired: {_text(job.get('explanation') or '')}{link}"
    else:
        text = f"{ICON.get(job['status'], '')} {what} {verb} by {job['launched_by']}{link}".strip()
    return {"text": text, "username": "fleetdeploy", "fleetdeploy": job}


class Notifier:
    def __init__(self, url: str | None, base_url: str | None = None) -> None:
        self.url = url
        self.base_url = base_url

    def send(self, job: dict[str, Any]) -> None:
        """Post in the background: a slow chat server must never hold up a deploy."""
        if not self.url:
            return
        payload = message(job, self.base_url)
        threading.Thread(target=self._post, args=(payload,), name="notify", daemon=True).start()

    def _post(self, payload: dict[str, Any]) -> None:
        assert self.url is not None
        try:
            httpx.post(self.url, json=payload, timeout=5.0).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("notification webhook failed: %s", exc)
