"""The local stack is real: Kafka 4 and SolrCloud 9 answer their own clients."""

from __future__ import annotations

import socket

import pytest
import requests
from confluent_kafka.admin import AdminClient

from imagetag.errors import ServiceError
from imagetag.settings import Settings
from imagetag.solr_admin import SolrAdmin
from imagetag.stack import LocalStack


def test_status_reports_versions_addresses_and_pids(local_stack: LocalStack) -> None:
    statuses = {s.name: s for s in local_stack.status()}
    assert statuses["kafka"].running and str(statuses["kafka"].version).startswith("4.")
    assert statuses["solr"].running and str(statuses["solr"].version).startswith("9.")
    for status in statuses.values():
        assert status.pid and status.pid > 0
        assert str(status.pid) in status.line()


def test_up_is_a_no_op_when_already_up(local_stack: LocalStack) -> None:
    before = {s.name: s.pid for s in local_stack.status()}
    local_stack.up()
    assert {s.name: s.pid for s in local_stack.status()} == before


def test_kafka_client_lists_topics(settings: Settings, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    assert topic in metadata.topics
    assert len(metadata.topics[topic].partitions) == settings.kafka.partitions


def test_solr_answers_in_cloud_mode(settings: Settings) -> None:
    info = requests.get(f"{settings.solr.url}/admin/info/system", params={"wt": "json"}).json()
    assert info["mode"] == "solrcloud"
    assert info["lucene"]["solr-spec-version"].startswith("9.")


def test_collection_is_behind_an_alias_and_init_is_idempotent(isolated_settings: Settings) -> None:
    admin = SolrAdmin(isolated_settings)
    alias = isolated_settings.solr.collection
    collection = admin.aliases()[alias]
    assert collection == f"{alias}_1"
    again, created = admin.ensure_collection()
    assert (again, created) == (collection, False)
    response = requests.get(
        f"{isolated_settings.solr.url}/{alias}/select", params={"rows": "0", "wt": "json"}
    ).json()
    assert response["response"]["numFound"] == 0
    assert "tags" in response["facet_counts"]["facet_fields"]  # facets on by default


def test_port_taken_by_someone_else_is_one_clear_error(
    stack_settings: Settings, tmp_path: pytest.TempPathFactory
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        other = stack_settings.derive(
            kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
            stack={"home": str(tmp_path)},
        )
        with pytest.raises(ServiceError) as err:
            LocalStack(other).up()
    message = str(err.value)
    assert message.startswith(f"kafka at 127.0.0.1:{port}: port already in use")
    assert "kafka.log" in message
