"""Kernel-side knobs as a traitlets `Configurable`, so `ipython_config.py` can set them.

Precedence: the argument to `start()` > environment variable > IPython config > default.

    # ~/.ipython/profile_default/ipython_config.py
    c.Timeback.heartbeat_interval = 30
    c.Timeback.abandon_after = 900
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from traitlets import Float
from traitlets.config import Configurable

from .errors import invalid

ENV_VARS = {
    "heartbeat_interval": "TIMEBACK_NB_HEARTBEAT_INTERVAL",
    "abandon_after": "TIMEBACK_NB_ABANDON_AFTER",
}


class Timeback(Configurable):
    heartbeat_interval = Float(
        15.0, config=True, help="Seconds per heartbeat window (one TimeSpentEvent each)."
    )
    abandon_after = Float(
        600.0,
        config=True,
        help="Seconds without active time (all tabs hidden, or paused) after which tracking "
        "stops until the student comes back.",
    )
    ping_interval = Float(
        2.0, config=True, help="Seconds between the page's keep-alive reports while visible."
    )


def resolve_options(
    arguments: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, ipython_config: Any = None
) -> dict[str, float]:
    """The effective knob values; `arguments` holds only the ones passed explicitly (not None)."""
    environ = os.environ if environ is None else environ
    configured = Timeback(config=ipython_config) if ipython_config is not None else Timeback()
    values: dict[str, float] = {}
    for name in ("heartbeat_interval", "abandon_after", "ping_interval"):
        if arguments.get(name) is not None:
            values[name] = arguments[name]
        elif environ.get(ENV_VARS.get(name, "")):
            raw = environ[ENV_VARS[name]]
            try:
                values[name] = float(raw)
            except ValueError:
                raise invalid(ENV_VARS[name], f"must be a number of seconds, not {raw!r}") from None
        else:
            values[name] = getattr(configured, name)
    return values
