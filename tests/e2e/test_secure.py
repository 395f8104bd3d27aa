"""The stream on the secured stack (``stack.secure``): every component with the least-privileged
credentials it needs (``imagetag stack credentials``), and everything else refused."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from imagetag.errors import ServiceError
from imagetag.settings import Settings
from imagetag.solr import SolrWriter
from imagetag.testing.samples import fashion_images
from imagetag.testing.services import as_component, secured_stack
from tests.e2e.conftest import (
    StreamProcess,
    accounted,
    assert_exact,
    group_caught_up,
    produce,
    run_imagetag,
    solr_count,
    wait_until,
)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with secured_stack(tmp_path_factory.mktemp("secure-stack")) as settings:
        yield settings


def test_produce_stream_search_with_credentials_and_nothing_without(
    secured: Settings,
    model_store: str,
    stream_factory: Callable[..., StreamProcess],
    tmp_path: Path,
) -> None:
    base = secured.derive(
        model_store=model_store,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        archive_dir=str(tmp_path / "archive"),
        spark={"trigger_seconds": 1.0, "max_offsets_per_trigger": 200},
        metrics={"stream_port": 0},
    )
    init = run_imagetag(as_component(base, "admin"), "init", timeout_s=120)
    assert init.returncode == 0, init.stdout + init.stderr

    # produce (as the producer) -> stream (its own Kafka user, Solr's indexer) -> Solr
    stream = stream_factory(as_component(base, "stream")).start()
    ids = produce(as_component(base, "produce"), fashion_images(120, start=4000))
    checker = as_component(base, "backfill")  # reads every topic, reads Solr
    wait_until(accounted(checker, len(ids), 0), 300, "the secured stream to tag 120 images")
    assert_exact(checker, ids, dead=0)
    # the stream (its own user) commits its progress to its group; the tools user reads the lag
    wait_until(lambda: group_caught_up(checker), 60, "the stream's consumer group to catch up")
    assert stream.stop() == 0, stream.log()[-3000:]
    tagged = solr_count(checker)

    # search as the searcher
    search = run_imagetag(as_component(base, "search"), "search", "--rows", "3", timeout_s=60)
    assert search.returncode == 0, search.stdout + search.stderr
    assert any(image_id[:12] in search.stdout for image_id in ids)

    # the batch jobs as their users: a backfill of the topic (Spark's Kafka source with the
    # tools user's SCRAM login, Solr as the indexer), then a blue/green reindex as admin
    backfill = run_imagetag(
        as_component(base, "backfill"),
        "backfill",
        "kafka",
        "--json",
        "--no-progress",
        timeout_s=600,
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-3000:]
    summary = json.loads([x for x in backfill.stdout.splitlines() if x.startswith("{")][-1])
    assert summary["images"] == len(ids)
    assert summary["tagged"] == tagged  # the same model: the same decisions
    reindex = run_imagetag(as_component(base, "admin"), "reindex", "--json", timeout_s=600)
    assert reindex.returncode == 0, reindex.stdout[-2000:] + reindex.stderr[-3000:]
    wait_until(lambda: solr_count(checker) == tagged, 60, "the reindexed collection")

    # refused: anonymous update and query, the searcher updating, Kafka without credentials
    url = f"{base.solr.url}/{base.solr.collection}"
    doc = {"id": "f" * 64}
    assert requests.post(f"{url}/update", json=[doc], timeout=10).status_code == 401
    assert requests.get(f"{url}/select", params={"q": "*:*"}, timeout=10).status_code == 401
    with pytest.raises(ServiceError, match="user 'searcher' may not update"):
        SolrWriter(as_component(base, "search")).write([doc])
    anonymous = run_imagetag(base, "init", "--skip-solr", timeout_s=120)
    assert anonymous.returncode == 2 and "kafka at" in anonymous.stderr
