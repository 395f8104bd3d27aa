"""The jobs on a real Spark standalone cluster (master + worker from pyspark's own spark-class,
on loopback), submitted with spark-submit: the code shipped as a zip in --py-files, the
connector jars in --jars (``imagetag submit``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from imagetag.cluster import CODE_ZIP
from imagetag.datasets import write_tiny_images
from imagetag.settings import Settings
from imagetag.stack import LocalStack
from imagetag.testing import services
from imagetag.testing.samples import fashion_images
from tests.e2e.conftest import (
    StreamProcess,
    accounted,
    assert_exact,
    produce,
    run_imagetag,
    wait_until,
)

# The test cluster's master: the default port + 10000, as the rest of the test stack.
MASTER = "spark://127.0.0.1:17077"
SPARK_SERVICES = ("spark-master", "spark-worker")


@pytest.fixture(scope="module")
def cluster(settings: Settings) -> Iterator[LocalStack]:
    """The test stack with a standalone master and worker (Kafka and Solr already run: `up`
    leaves them); only the Spark daemons are stopped afterwards."""
    stack = LocalStack(settings.derive(spark={"master": MASTER}))
    stack.up()
    yield stack
    stack.down(SPARK_SERVICES)


def on_cluster(settings: Settings) -> Settings:
    return settings.derive(spark={"master": MASTER, "executor_memory": "1g", "driver_memory": "1g"})


def executor_code(stack: LocalStack) -> list[Path]:
    """The code zips the worker's executors were given (``work/<app>/<executor>/``)."""
    worker = next(s for s in stack.services if s.name == "spark-worker")
    return sorted((worker.dir / "work").glob(f"app-*/*/{CODE_ZIP}"))


def test_stream_and_backfill_run_on_a_standalone_cluster(
    cluster: LocalStack,
    stream_settings: Settings,
    stream_factory: Callable[..., StreamProcess],
    tmp_path: Path,
) -> None:
    settings = on_cluster(stream_settings)
    submit = ("submit", "--dist", str(tmp_path / "dist"))
    shipped_before = len(executor_code(cluster))

    # The stream, submitted: 500 images in, every one in Solr or in review, once.
    ids = produce(settings, fashion_images(500, start=2000))
    stream = stream_factory(settings, command=(*submit, "stream")).start()
    wait_until(accounted(settings, len(ids), 0), 420, "the submitted stream to tag 500 images")
    time.sleep(3)  # a late duplicate would show up now
    assert_exact(settings, ids, dead=0)
    assert stream.stop() == 0, stream.log()[-3000:]
    assert len(executor_code(cluster)) > shipped_before, "executors got the code zip"

    # A backfill, submitted: a Tiny Images file read on the executors by the shipped code.
    rng = np.random.default_rng(7)
    tiny = tmp_path / "tiny_images.bin"
    write_tiny_images(tiny, [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(120)])
    before = services.solr_count(settings)
    result = run_imagetag(
        settings, *submit, "backfill", str(tiny), "--json", "--no-archive", timeout_s=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # spark-submit's PythonRunner merges the driver's stderr into its stdout: the summary is
    # the JSON line among the log lines.
    summary = json.loads([x for x in result.stdout.splitlines() if x.startswith("{")][-1])
    assert summary["images"] == 120
    assert summary["tagged"] + summary["review"] + summary["dead"] == 120
    expected = before + summary["tagged"]
    wait_until(lambda: services.solr_count(settings) == expected, 30, "the backfill's documents")
