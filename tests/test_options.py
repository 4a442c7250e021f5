"""Kernel-side knobs: argument > environment > IPython config > default."""

from __future__ import annotations

import math

import pytest
from traitlets.config import Config

from timeback_nb.errors import ValidationError
from timeback_nb.options import ENV_VARS, Timeback, resolve_idle_after, resolve_options


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
# Every way a number of seconds can be wrong, from each place a knob can come from (issue 12 §10).
BAD_SECONDS = [0, -1, 1e-9, math.nan, math.inf, -math.inf, 10**400, 1e300]
BAD_SECONDS_TEXT = ["0", "-5", "1e-9", "nan", "inf", "-inf", "1e400", "1" + "0" * 400]


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["heartbeat_interval", "abandon_after", "ping_interval"])
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_a_bad_number_of_seconds_as_an_argument_is_refused_naming_it(name: str, value) -> None:
    with pytest.raises(ValidationError, match=f"^{name}: ") as caught:
        resolve_options({name: value}, environ={})
    assert caught.value.field == name


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["heartbeat_interval", "abandon_after", "ping_interval"])
@pytest.mark.parametrize("text", BAD_SECONDS_TEXT)
def test_a_bad_number_of_seconds_in_the_environment_is_refused_naming_the_variable(name: str, text: str) -> None:
    variable = ENV_VARS[name]
    with pytest.raises(ValidationError, match=f"^{variable}: "):
        resolve_options({}, environ={variable: text})


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["heartbeat_interval", "abandon_after", "ping_interval"])
@pytest.mark.parametrize("value", [*BAD_SECONDS, "soon", None, [1]], ids=repr)
def test_a_bad_number_of_seconds_in_ipython_config_is_refused_naming_the_option(name: str, value) -> None:
    config = Config()
    setattr(config.Timeback, name, value)
    with pytest.raises(ValidationError, match=rf"^c\.Timeback\.{name}: "):
        resolve_options({}, environ={}, ipython_config=config)


@pytest.mark.bad_input
def test_abandon_after_below_the_interval_is_refused_wherever_it_comes_from() -> None:
    with pytest.raises(ValidationError, match="^TIMEBACK_NB_ABANDON_AFTER: .*heartbeat_interval"):
        resolve_options({"heartbeat_interval": 30}, environ={"TIMEBACK_NB_ABANDON_AFTER": "10"})


def test_the_smallest_and_largest_accepted_values_work() -> None:
    values = resolve_options({"heartbeat_interval": 0.1, "abandon_after": 0.1}, environ={"TIMEBACK_NB_PING_INTERVAL": "0.05"})
    assert values == {"heartbeat_interval": 0.1, "abandon_after": 0.1, "ping_interval": 0.05}
    week = 7 * 86_400
    assert resolve_options({"heartbeat_interval": 86_400, "abandon_after": week}, environ={})["abandon_after"] == week


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [-1, 0.5, math.nan, math.inf, 10**400, 1e300, "soon"], ids=repr)
def test_a_bad_idle_after_is_refused_naming_where_it_came_from(value) -> None:
    with pytest.raises(ValidationError, match="^idle_after: "):
        resolve_idle_after(value, environ={})
    config = Config()
    config.Timeback.idle_after = value
    with pytest.raises(ValidationError, match=r"^c\.Timeback\.idle_after: "):
        resolve_idle_after(None, environ={}, ipython_config=config)
    if not isinstance(value, str):
        with pytest.raises(ValidationError, match="^TIMEBACK_NB_IDLE_AFTER: "):
            resolve_idle_after(None, environ={"TIMEBACK_NB_IDLE_AFTER": repr(value) if value != 10**400 else "1" + "0" * 400})
