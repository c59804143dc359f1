"""A distributed openimm (PostgreSQL + Redis + API + worker pool processes) per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alibabacloud_imm20200930.client import Client as ImmSdk

from tests.e2e.stack import Stack, imm_sdk, launch
from tests.realservices import PostgresServer, RedisServer, start_postgres, start_redis

_counter = iter(range(1, 1000))


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    n = next(_counter)
    stack = launch(
        tmp_path_factory.mktemp("stack"),
        database_url=postgres_server.create_database(f"e2e_{n}"),
        broker_url=redis_server.url(n % 16),
        max_attempts="2",
        time_limits='{"Diagnostic": 6}',
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> ImmSdk:
    """The official alibabacloud-imm20200930 client pointed at openimm."""
    return imm_sdk(stack.endpoint)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the test's own, for tests that stop or pause it."""
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that restart or pause it."""
    server = start_redis()
    yield server
    server.stop()
