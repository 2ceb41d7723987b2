"""Shared pytest fixtures."""

import pytest

from tests.support import running_server


@pytest.fixture
async def server():
    async with running_server() as srv:
        yield srv
