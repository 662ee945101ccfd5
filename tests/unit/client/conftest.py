"""Fixtures of the client's unit tests."""

import asyncio

import pytest


@pytest.fixture
def run():
    """``run(coro)``: the coroutine run to its end on one event loop kept
    for the whole test (tasks a volume starts live between calls)."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()
