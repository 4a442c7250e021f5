"""timeback_nb: turn a Jupyter notebook into a Timeback learning activity.

    %load_ext timeback_nb
    activity = timeback_nb.start("week-3", "Week 3: Linear functions", {"subject": "Math", "grade": 8})
    ...
    activity.end({"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8})
"""

from .activity import Activity
from .api import current, flush, record, start
from .errors import ConfigError, DeliveryError, StateError, StoreError, TimebackError, ValidationError
from .magics import load_ipython_extension, unload_ipython_extension

__version__ = "0.1.0"

__all__ = [
    "Activity",
    "ConfigError",
    "DeliveryError",
    "StateError",
    "StoreError",
    "TimebackError",
    "ValidationError",
    "__version__",
    "current",
    "flush",
    "load_ipython_extension",
    "record",
    "start",
    "unload_ipython_extension",
]
