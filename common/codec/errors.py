"""The one error every decoder raises for input it cannot accept."""
from __future__ import annotations


class BadRecord(ValueError):
    """A record a stage cannot handle. `reason` is short, ASCII and machine-readable
    (`bad_header:received_ns`, `malformed_event:...`), fit for a DLQ header and a log line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
