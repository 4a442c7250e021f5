"""Kernel-side knobs: argument > environment > IPython config > default."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from timeback_nb.errors import ValidationError
from timeback_nb.options import Timeback, resolve_options


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
    assert {"heartbeat_interval", "abandon_after", "ping_interval"} <= set(traits)
    assert all(trait.help for trait in traits.values())
