"""Pytest fixtures for the fake Anthropic API (`app.llm.fake_anthropic`), served by uvicorn
on a real 127.0.0.1 port from a background thread (its own event loop), so the real SDK
talks HTTP to it from any test. One server per test run; each test starts from a reset.

Register with `pytest_plugins = [..., "tests.llm.fake_server"]` in tests/conftest.py.
Benchmarks and subprocess-based tests use `FakeAnthropicServer` directly (a context
manager, sync or async) and hand `base_url` / `api_key` to whatever they start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from app.llm.fake_anthropic import FakeAnthropicServer

__all__ = ["FakeAnthropicServer", "fake_anthropic", "fake_anthropic_server", "sdk_client"]


@pytest.fixture(scope="session")
def fake_anthropic_server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropicServer) -> Iterator[FakeAnthropicServer]:
    """The shared fake, with an empty script, no recorded requests and a cold prompt cache."""
    fake_anthropic_server.reset()
    yield fake_anthropic_server
    fake_anthropic_server.reset()


def sdk_client(fake: FakeAnthropicServer, **options: Any) -> anthropic.AsyncAnthropic:
    """The real SDK client pointed at the fake; SDK retries are off unless asked for."""
    options.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=fake.api_key, **options)
