"""The one exception family of timeback_nb.

Every message names the field at fault and, where there is a closed set, the allowed values,
so a course author can fix the call without reading the source.
"""

from __future__ import annotations


class TimebackError(Exception):
    """Base class of every error timeback_nb raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ValidationError(TimebackError, ValueError):
    """An argument, metric or page message is not acceptable; nothing was recorded or sent."""


class ConfigError(TimebackError):
    """`timeback.config.json` or the environment cannot be used as given."""


class StateError(TimebackError):
    """The call makes no sense in the activity's current state (e.g. a second `start`)."""


class StoreError(TimebackError):
    """The store file cannot be written or read right now (locked, read-only, full, gone)."""


class DeliveryError(TimebackError):
    """The endpoint refused or could not take an event (the event stays in the outbox)."""


def invalid(field: str, message: str) -> ValidationError:
    """A ValidationError whose text starts with the field name: ``"field: message"``."""
    return ValidationError(f"{field}: {message}", field=field)
