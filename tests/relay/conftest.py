"""The in-process relay most relay tests post to (a module may define its own `relay`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .harness import InProcessRelay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[InProcessRelay]:
    relay = InProcessRelay(tmp_path)
    yield relay
    relay.close()
