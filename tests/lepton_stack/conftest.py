"""Fixtures of the lepton_stack tests: scripted HTTP subscribers, a router under test, layouts.

The shared AWS fixtures (fake credentials, mock_aws, moto_server, moto_endpoint) live in
tests/conftest.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path: make the
# helper module importable (here and in the test modules) under its unique name.
sys.path.insert(0, str(Path(__file__).parent))

from stack_support import Subscriber, serve_subscriber

from lepton_stack.router import Router
from lepton_stack.state import StackLayout
from lepton_stack.triggers import Trigger


@pytest.fixture
def subscribers() -> Iterator[Callable[[], Subscriber]]:
    """Starts recording HTTP subscribers on free loopback ports; stopped after the test."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(serve_subscriber())


@pytest.fixture
def subscriber(subscribers: Callable[[], Subscriber]) -> Subscriber:
    return subscribers()


@pytest.fixture
def make_router() -> Iterator[Callable[..., Router]]:
    """Builds Routers over the given Triggers and subscriber addresses; stopped after the test."""
    routers: list[Router] = []

    def make(triggers: list[Trigger], subscribers: dict[str, str]) -> Router:
        router = Router(triggers, subscribers)
        routers.append(router)
        return router

    yield make
    for router in routers:
        router.stop()


@pytest.fixture
def layout(tmp_path: Path) -> StackLayout:
    return StackLayout(root=tmp_path / ".lepton")
