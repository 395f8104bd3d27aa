"""The secured local stack (``stack.secure``): Solr with BasicAuth and rule-based authorization.

A stack of its own (its own ports and home), since the session's test stack is open. Each
component authenticates as the least-privileged user it needs; everything else is refused
with one line naming the service, the user and the operation.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imagetag.errors import ServiceError
from imagetag.secure_stack import StackCredentials
from imagetag.settings import Settings
from imagetag.solr import SolrWriter, solr_client
from imagetag.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
IMAGETAG = str(Path(sys.executable).with_name("imagetag"))
# The secured stack's ports: the test stack's + 10000, so the two run side by side.
PORTS = {"kafka": 29092, "kafka_controller": 29093, "solr": 28983}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("secure-stack")
    settings = Settings.load(
        kafka={"bootstrap_servers": f"127.0.0.1:{PORTS['kafka']}"},
        solr={"url": f"http://127.0.0.1:{PORTS['solr']}/solr", "commit_within_ms": 200},
        stack={
            "home": str(home),
            "kafka_controller_port": PORTS["kafka_controller"],
            "secure": True,
        },
    )
    stack = LocalStack(settings)
    stack.up()
    try:
        yield settings
    finally:
        stack.down()


def as_component(settings: Settings, component: str) -> Settings:
    user, password = StackCredentials.load_or_create(settings.stack.home).solr_user(component)
    return settings.derive(solr={"username": user, "password": password})


def imagetag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMAGETAG, *args],
        env=settings.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_each_component_gets_what_its_user_may_and_nothing_else(secured: Settings) -> None:
    admin = as_component(secured, "admin")
    init = imagetag(admin, "init")
    assert init.returncode == 0, init.stdout + init.stderr

    base = secured.solr.url
    alias = secured.solr.collection
    doc = {"id": "a" * 64, "tags": ["Bag"], "top_tag": "Bag", "confidence": 0.9}
    # Anonymous: no update, no query.
    assert requests.post(f"{base}/{alias}/update", json=[doc], timeout=10).status_code == 401
    assert (
        requests.get(f"{base}/{alias}/select", params={"q": "*:*"}, timeout=10).status_code == 401
    )

    # The searcher reads but may not update: one line naming the user and the operation.
    searcher = as_component(secured, "search")
    with pytest.raises(ServiceError, match="user 'searcher' may not update"):
        SolrWriter(searcher).write([doc])

    # The indexer (the stream's user) writes; the searcher then finds it, CLI included.
    indexer = as_component(secured, "stream")
    assert SolrWriter(indexer).write([doc]).accepted == 1
    solr_client(indexer).commit()
    assert solr_client(searcher).search("*:*").hits == 1
    search = imagetag(searcher, "search", "Bag")
    assert search.returncode == 0, search.stdout + search.stderr
    assert "a" * 12 in search.stdout

    # The indexer may not administer collections; a wrong password is named as such.
    refused = imagetag(indexer, "init")
    assert refused.returncode == 2
    assert "user 'indexer' may not" in refused.stderr
    wrong = secured.derive(solr={"username": "indexer", "password": "not-it"})
    with pytest.raises(ServiceError, match="user 'indexer' is not authenticated"):
        SolrWriter(wrong).write([doc])


def test_credentials_reach_no_log(secured: Settings) -> None:
    passwords = StackCredentials.load_or_create(secured.stack.home).solr.values()
    logs = "".join(p.read_text(errors="replace") for p in (secured.stack.home / "logs").glob("*"))
    assert logs and not any(password in logs for password in passwords)
    printed = imagetag(secured, "stack", "credentials", "search")
    assert printed.returncode == 0
    assert "IMAGETAG_SOLR__USERNAME=searcher" in printed.stdout
