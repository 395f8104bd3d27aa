"""The secured stack's credentials and Solr security.json, without services."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

from imagetag.secure_stack import (
    CREDENTIALS_FILE,
    StackCredentials,
    kafka_acls,
    kafka_scram_arguments,
    kafka_security_properties,
    solr_password_hash,
    solr_security_json,
)
from imagetag.settings import Settings


def test_credentials_are_generated_once_and_only_the_owner_reads_them(tmp_path: Path) -> None:
    first = StackCredentials.load_or_create(tmp_path)
    assert set(first.solr) == {"admin", "indexer", "searcher"}
    assert len(set(first.solr.values())) == 3 and all(len(p) >= 24 for p in first.solr.values())
    assert StackCredentials.load_or_create(tmp_path) == first
    mode = stat.S_IMODE((tmp_path / CREDENTIALS_FILE).stat().st_mode)
    assert mode == 0o600
    assert all(password not in repr(first) for password in first.solr.values())
    assert first.solr_user("stream") == ("indexer", first.solr["indexer"])
    assert first.solr_user("search") == ("searcher", first.solr["searcher"])
    assert set(first.kafka) == {"admin", "stream", "producer", "tools"}
    assert first.kafka_user("produce") == ("producer", first.kafka["producer"])
    assert all(password not in repr(first) for password in first.kafka.values())


def test_kafka_users_and_acls_grant_least_privilege(tmp_path: Path) -> None:
    credentials = StackCredentials.load_or_create(tmp_path)
    properties = "\n".join(kafka_security_properties(credentials))
    assert "allow.everyone.if.no.acl.found=false" in properties
    assert "super.users=User:admin\n" in properties + "\n"
    assert len(kafka_scram_arguments(credentials)) == 2 * len(credentials.kafka)
    acls = set(kafka_acls(Settings.load()))
    assert ("producer", "TOPIC", "LITERAL", "images", "WRITE") in acls
    assert ("producer", "TOPIC", "LITERAL", "images", "READ") not in acls
    assert ("stream", "TOPIC", "LITERAL", "images", "READ") in acls
    assert ("stream", "TOPIC", "LITERAL", "images", "WRITE") not in acls
    assert ("stream", "TOPIC", "LITERAL", "images.dlq", "WRITE") in acls
    assert not any(user == "admin" for user, *_ in acls)  # the super user needs none


def test_password_hash_is_solrs_double_sha256() -> None:
    salt = b"0123456789abcdef"
    expected = hashlib.sha256(hashlib.sha256(salt + b"s3cret").digest()).digest()
    digest, encoded_salt = solr_password_hash("s3cret", salt).split(" ")
    assert base64.b64decode(digest) == expected
    assert base64.b64decode(encoded_salt) == salt


def test_security_json_blocks_anonymous_and_grants_least_privilege(tmp_path: Path) -> None:
    credentials = StackCredentials.load_or_create(tmp_path)
    security = solr_security_json(credentials)
    auth = security["authentication"]
    assert auth["class"] == "solr.BasicAuthPlugin" and auth["blockUnknown"] is True
    assert set(auth["credentials"]) == {"admin", "indexer", "searcher"}
    assert all(p not in str(security) for p in credentials.solr.values())  # hashes only
    permissions = {p["name"]: p["role"] for p in security["authorization"]["permissions"]}
    assert "searcher" in permissions["read"] and "searcher" not in permissions["update"]
    assert "indexer" in permissions["update"] and permissions["all"] == ["admin"]


def test_kafka_refusals_are_one_line_naming_the_user() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from imagetag.kafka_admin import failure_line

    settings = Settings.load(kafka={"client": {"sasl.username": "producer", "sasl.password": "x"}})
    login = KafkaException(KafkaError(KafkaError._AUTHENTICATION))
    assert failure_line(settings, "list topics", login) == (
        "user 'producer' is not authenticated to list topics (SASL: wrong or no password)"
    )
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert failure_line(settings, "create topic images", denied).startswith(
        "user 'producer' may not create topic images"
    )
    assert failure_line(Settings.load(), "list topics", denied).startswith("user 'anonymous'")
