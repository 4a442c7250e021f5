"""Kernel-side knobs: argument > environment > IPython config > default."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from timeback_nb.errors import ValidationError
from timeback_nb.options import Timeback, resolve_idle_after, resolve_options


def test_defaults() -> None:
    assert resolve_options({}, environ={}) == {"heartbeat_interval": 15.0, "abandon_after": 600.0, "ping_interval": 2.0}


def test_precedence_argument_then_env_then_ipython_config() -> None:
    config = Config()
    config.Timeback.heartbeat_interval = 30.0
    config.Timeback.abandon_after = 900.0
    environ = {"TIMEBACK_NB_ABANDON_AFTER": "1200"}
    values = resolve_options({"heartbeat_interval": None}, environ=environ, ipython_config=config)
    assert values["heartbeat_interval"] == 30.0 and values["abandon_after"] == 1200.0
    values = resolve_options({"heartbeat_interval": 5, "abandon_after": 60}, environ=environ, ipython_config=config)
    assert values["heartbeat_interval"] == 5 and values["abandon_after"] == 60


@pytest.mark.bad_input
def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValidationError, match="TIMEBACK_NB_HEARTBEAT_INTERVAL"):
        resolve_options({}, environ={"TIMEBACK_NB_HEARTBEAT_INTERVAL": "soon"})


def test_the_options_are_documented_configurables() -> None:
    traits = Timeback.class_traits(config=True)
    assert {"heartbeat_interval", "abandon_after", "ping_interval", "idle_after"} <= set(traits)
    assert all(trait.help for trait in traits.values())


def test_the_idle_rule_is_off_by_default_and_follows_the_same_precedence() -> None:
    assert resolve_idle_after(None, environ={}) is None
    config = Config()
    config.Timeback.idle_after = 300.0
    assert resolve_idle_after(None, environ={}, ipython_config=config) == 300.0
    environ = {"TIMEBACK_NB_IDLE_AFTER": "120"}
    assert resolve_idle_after(None, environ=environ, ipython_config=config) == 120.0
    assert resolve_idle_after(60, environ=environ, ipython_config=config) == 60.0
    # Off, wherever it is said: 0 as the argument, 0 or "off" in the environment.
    assert resolve_idle_after(0, environ=environ, ipython_config=config) is None
    assert resolve_idle_after(None, environ={"TIMEBACK_NB_IDLE_AFTER": "off"}, ipython_config=config) is None
    assert resolve_idle_after(None, environ={"TIMEBACK_NB_IDLE_AFTER": "0"}, ipython_config=config) is None
    assert resolve_idle_after(None, environ={"TIMEBACK_NB_IDLE_AFTER": " "}, ipython_config=config) == 300.0


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("argument", "environ", "field"),
    [
        (-5, {}, "idle_after"),
        (0.5, {}, "idle_after"),
        (float("nan"), {}, "idle_after"),
        ("60", {}, "idle_after"),
        (True, {}, "idle_after"),
        (None, {"TIMEBACK_NB_IDLE_AFTER": "soon"}, "TIMEBACK_NB_IDLE_AFTER"),
        (None, {"TIMEBACK_NB_IDLE_AFTER": "1e9"}, "TIMEBACK_NB_IDLE_AFTER"),
    ],
)
def test_a_bad_idle_after_names_where_it_came_from(argument: object, environ: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        resolve_idle_after(argument, environ=environ)
