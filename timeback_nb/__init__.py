"""timeback_nb: turn a Jupyter notebook into a Timeback learning activity."""

from .errors import ConfigError, DeliveryError, StateError, TimebackError, ValidationError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeliveryError",
    "StateError",
    "TimebackError",
    "ValidationError",
    "__version__",
]
