"""Shared fixtures. Unit tests use none of them and start nothing; integration and e2e tests
get one real stack per test session and their own topics / collection per test.

The stack is started through the same code the user runs (``LocalStack``), on its own ports
and its own home (``.stack/test``), so it never collides with a stack a developer left running
on the default ports. It is stopped at the end of the session if this session started it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from imagetag.kafka_admin import delete_topics, ensure_topics
from imagetag.settings import Settings
from imagetag.stack import LocalStack
from imagetag.testing import services

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The test stack's own ports (the defaults + 10000), so it never meets a developer's stack.
# TEST_IMAGETAG_STACK="kafka,controller,solr,home" moves it (a second checkout's tests running
# beside the first, e.g. "39092,39093,38983,.stack/other").
_MOVED = os.environ.get("TEST_IMAGETAG_STACK", "").split(",")
TEST_PORTS = (
    {"kafka": int(_MOVED[0]), "kafka_controller": int(_MOVED[1]), "solr": int(_MOVED[2])}
    if len(_MOVED) == 4
    else {"kafka": 19092, "kafka_controller": 19093, "solr": 18983}
)
TEST_HOME = _MOVED[3] if len(_MOVED) == 4 else ".stack/test"


def _unique(prefix: str, request: pytest.FixtureRequest) -> str:
    name = request.node.name.split("[")[0].replace("test_", "")[:30]
    return f"{prefix}_{name}_{uuid.uuid4().hex[:8]}".lower().replace("-", "_")


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the test stack (own ports, own home, own model store and checkpoints)."""
    scratch = tmp_path_factory.mktemp("imagetag")
    return Settings.load(
        kafka={"bootstrap_servers": f"127.0.0.1:{TEST_PORTS['kafka']}"},
        solr={"url": f"http://127.0.0.1:{TEST_PORTS['solr']}/solr", "commit_within_ms": 200},
        stack={"home": TEST_HOME, "kafka_controller_port": TEST_PORTS["kafka_controller"]},
        spark={"driver_memory": "2g", "shuffle_partitions": 2},
        # any free port: several streams and backfills may run at once, none on 9108 / 9109
        metrics={"stream_port": 0, "backfill_port": 0},
        model_store=str(scratch / "models"),
        checkpoint_dir=str(scratch / "checkpoints"),
        archive_dir=str(scratch / "archive"),
    )


@pytest.fixture(scope="session")
def local_stack(stack_settings: Settings) -> Iterator[LocalStack]:
    stack = LocalStack(stack_settings)
    was_running = all(s.running for s in stack.status())
    stack.up()
    yield stack
    if not was_running:
        stack.down()


@pytest.fixture(scope="session")
def settings(local_stack: LocalStack, stack_settings: Settings) -> Settings:
    """Session settings pointing at the running test stack."""
    del local_stack
    return stack_settings


@pytest.fixture
def topic(settings: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh topic for this test (partitions and max.message.bytes as `imagetag init`)."""
    name = _unique("t", request)
    ensure_topics(settings, [name])
    yield name
    delete_topics(settings, [name])


@pytest.fixture
def isolated_settings(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings with this test's own topics and own Solr alias + collection, all created
    as `imagetag init` creates them, and removed afterwards."""
    with services.isolated_settings(settings, _unique("it", request)) as derived:
        yield derived


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    from imagetag.spark import spark_session

    session = spark_session(settings, "imagetag-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def local_spark() -> Iterator[SparkSession]:
    """A local SparkSession (no Kafka/Solr needed); reuses and keeps one that already runs."""
    from pyspark.sql import SparkSession

    from imagetag.spark import spark_session

    existing = SparkSession.getActiveSession()
    session = existing or spark_session(
        Settings.load(spark={"shuffle_partitions": 2}), "imagetag-local-test"
    )
    yield session
    if existing is None:
        session.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration and tests/e2e is an integration test.
    for item in items:
        path = str(item.path)
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/tests/e2e/" in path:
            item.add_marker(pytest.mark.e2e)
