"""Secrets out of text that came from outside: error bodies, exception messages.

A careless server may echo what it was sent: the client secret as is, inside
`Basic base64(id:secret)`, URL-encoded in a form, JSON-escaped, or the bearer token it was
given. A `Redactor` knows the secrets of one transport and replaces each of those forms with
`***`. It is applied where remote text enters (a transport's reasons and errors), so nothing
downstream (the store's reasons, `last_error`, the widget, logs, reprs) ever holds a secret.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections import deque
from urllib.parse import quote, quote_plus

MASK = "***"
KEPT_TOKENS = 8  # a reply may echo a token that was replaced a moment ago
_MIN_SECRET_CHARS = 4  # shorter "secrets" would mask ordinary words


def encodings(secret: str) -> set[str]:
    """The forms in which `secret` may come back inside text."""
    escaped = json.dumps(secret)[1:-1]
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), escaped, escaped.replace("/", "\\/")}
    raw = secret.encode("utf-8")
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        forms.add(encoded.decode("ascii").rstrip("="))
    return {form for form in forms if len(form) >= _MIN_SECRET_CHARS}


class Redactor:
    """Masks every known form of the secrets it was given; callable on text. Thread-safe."""

    def __init__(self) -> None:
        self._fixed: set[str] = set()
        self._tokens: deque[set[str]] = deque(maxlen=KEPT_TOKENS)
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return "Redactor(<secrets>)"

    def add_secret(self, secret: str) -> None:
        """A secret for the transport's lifetime (a client secret, a fixed API token)."""
        with self._lock:
            self._fixed |= encodings(secret)
            self._pattern = None

    def add_credentials(self, client_id: str, client_secret: str) -> None:
        """The client secret, and the `Basic` header value built from it (in all its forms)."""
        self.add_secret(client_secret)
        self.add_secret(base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii"))

    def add_token(self, token: str) -> None:
        """An access token; the last `KEPT_TOKENS` are remembered."""
        with self._lock:
            self._tokens.append(encodings(token))
            self._pattern = None

    def __call__(self, text: str) -> str:
        with self._lock:
            if self._pattern is None:
                forms = self._fixed.union(*self._tokens)
                # Longest first, so a form never leaves the tail of a longer one behind.
                alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
                # Case-blind: percent-encoding's hex digits (and some echoes) come back in either case.
                self._pattern = re.compile(alternatives, re.IGNORECASE) if alternatives else re.compile(r"(?!)")
            pattern = self._pattern
        return pattern.sub(MASK, text)
