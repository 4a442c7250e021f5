"""Kernel-side knobs as a traitlets `Configurable`, so `ipython_config.py` can set them.

Precedence: the argument to `start()` > environment variable > IPython config > default.

    # ~/.ipython/profile_default/ipython_config.py
    c.Timeback.heartbeat_interval = 30
    c.Timeback.abandon_after = 900
    c.Timeback.idle_after = 120     # the idle rule, off by default
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from traitlets import Float
from traitlets.config import Configurable

from .errors import invalid
from .validation import validate_idle_after, validate_seconds

ENV_VARS = {
    "heartbeat_interval": "TIMEBACK_NB_HEARTBEAT_INTERVAL",
    "abandon_after": "TIMEBACK_NB_ABANDON_AFTER",
    "ping_interval": "TIMEBACK_NB_PING_INTERVAL",
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
    idle_after = Float(
        None,
        allow_none=True,
        config=True,
        help="The idle rule: seconds without input (keyboard, pointer, wheel, touch, focus) after "
        "which a page that shows the notebook stops counting, from its last input. None or 0: "
        "off (the default; Timeback's own SDK counts visibility only).",
    )

IDLE_AFTER_ENV = "TIMEBACK_NB_IDLE_AFTER"


def resolve_options(
    arguments: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, ipython_config: Any = None
) -> dict[str, float]:
    """The effective knob values; `arguments` holds only the ones passed explicitly (not None).

    Each value is checked where it came from, so a refusal names the argument, the environment
    variable or the `c.Timeback.<name>` option to fix (a `TimebackError`, never a traitlets or
    arithmetic error)."""
    environ = os.environ if environ is None else environ
    section = _config_section(ipython_config)
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name in ("heartbeat_interval", "abandon_after", "ping_interval"):
        if arguments.get(name) is not None:
            source, raw = name, arguments[name]
        elif environ.get(ENV_VARS[name]):
            source, text = ENV_VARS[name], environ[ENV_VARS[name]]
            try:
                raw = float(text)
            except ValueError:
                raise invalid(source, f"must be a number of seconds, not {text!r}") from None
        elif name in section:
            source, raw = f"c.Timeback.{name}", section[name]
        else:
            source, raw = name, Timeback.class_traits()[name].default_value
        values[name] = validate_seconds(raw, source, name)
        sources[name] = source
    if values["abandon_after"] < values["heartbeat_interval"]:
        raise invalid(
            sources["abandon_after"],
            f"must be ≥ heartbeat_interval ({values['heartbeat_interval']:g} s), got {values['abandon_after']:g} s",
        )
    return values


def resolve_idle_after(
    argument: Any, *, environ: Mapping[str, str] | None = None, ipython_config: Any = None
) -> float | None:
    """The idle rule's seconds, None when off: the argument (None: not given; 0: off) >
    ``TIMEBACK_NB_IDLE_AFTER`` (unset or empty: not given; 0 or "off": off) > ``c.Timeback.idle_after``."""
    environ = os.environ if environ is None else environ
    text = environ.get(IDLE_AFTER_ENV, "").strip()
    if argument is not None:
        return validate_idle_after(argument, "idle_after")
    if text:
        if text.lower() == "off":
            return None
        try:
            return validate_idle_after(float(text), IDLE_AFTER_ENV)
        except ValueError:
            raise invalid(IDLE_AFTER_ENV, f"must be a number of seconds or 'off', not {text!r}") from None
    configured = _config_section(ipython_config).get("idle_after")
    if configured is None:
        return None
    return validate_idle_after(configured, "c.Timeback.idle_after")


def _config_section(ipython_config: Any) -> Mapping[str, Any]:
    """The `c.Timeback` values as set, unconverted (a traitlets conversion error would not say
    which option is wrong in our terms)."""
    if ipython_config is None:
        return {}
    try:
        section = ipython_config.get("Timeback") if "Timeback" in ipython_config else None
    except Exception:
        return {}
    return section if isinstance(section, Mapping) else {}
