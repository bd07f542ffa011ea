import time

import pytest


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Clock times on screen (checkpoint times) read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
