"""The domain's one exception: a refusal, with the HTTP status that fits it and a message for a person.

The web turns it into an answer (JSON for the API, a page for the browser); the CLI prints its message.
"""

from __future__ import annotations

from typing import Any


class ConsoleError(Exception):
    """A refusal with the HTTP status that fits it and a message for a person."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra
