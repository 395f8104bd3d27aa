"""The secured local stack (``stack.secure``): its users, their passwords, Solr's security.json
and Kafka's SASL/SCRAM users and ACLs.

Off by default, so ``make demo`` and ``make test`` run as before. With ``stack.secure`` on,
``imagetag stack up`` turns on

- in Kafka: a ``SASL_PLAINTEXT`` listener on loopback with ``SCRAM-SHA-512`` (the users written
  at storage-format time, KIP-900), the controller listener with ``PLAIN``, the KRaft
  ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false`` and ``admin`` as the
  only super user; ACLs for the others (:func:`kafka_acls`);
- in Solr: ``BasicAuthPlugin`` and ``RuleBasedAuthorizationPlugin`` (``security.json`` at the
  root of ZooKeeper, the way Solr's own ``bin/solr auth enable`` does it) with three users:

=========  =============================================  ==========================
user       may                                            used by
=========  =============================================  ==========================
admin      everything (collections, aliases, configsets)  init, reindex
indexer    read and update                                stream, backfill, retrain
searcher   read                                           search
=========  =============================================  ==========================

Kafka users: ``admin`` (super user: topics), ``stream`` (reads ``images``, writes review,
dead letters and the ledger in transactions), ``producer`` (writes ``images``), ``tools``
(backfill, retrain, dlq replay: reads every topic, writes like the stream, and ``images``).

The passwords are generated once per stack home into ``<stack.home>/credentials.json``
(mode 0600) and are never logged. ``imagetag stack credentials ROLE`` prints the settings a
component needs as ``IMAGETAG_*`` variables, for ``eval`` in its shell.

ZooKeeper's copy: Solr's embedded ZooKeeper keeps ``/security.json`` in the stack home, so it is
written once, right after the first start (before ``up`` returns, and before anything of ours
sends a request; the node listens on loopback only); every later start is secured from its
first request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagetag.settings import Settings

SOLR_ROLES: dict[str, list[str]] = {
    "admin": ["admin"],
    "indexer": ["indexer"],
    "searcher": ["searcher"],
}
KAFKA_USERS = ("admin", "stream", "producer", "tools")
# Component -> (the Solr user, the Kafka user) it runs as (least privilege; None: not used).
COMPONENTS: dict[str, tuple[str | None, str | None]] = {
    "admin": ("admin", "admin"),  # init, reindex
    "stream": ("indexer", "stream"),
    "backfill": ("indexer", "tools"),  # also retrain and dlq replay
    "search": ("searcher", None),
    "produce": (None, "producer"),
}
CREDENTIALS_FILE = "credentials.json"
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class StackCredentials:
    """The generated passwords of the secured stack's users, by service and user."""

    solr: dict[str, str]
    kafka: dict[str, str]

    @classmethod
    def load_or_create(cls, home: Path) -> StackCredentials:
        """The stack home's credentials, generated (random, 24 bytes each) on first use into a
        file only its owner can read."""
        path = home / CREDENTIALS_FILE
        if path.exists():
            data = json.loads(path.read_text())
            return cls(solr=dict(data["solr"]), kafka=dict(data["kafka"]))
        created = cls(
            solr={user: secrets.token_urlsafe(24) for user in SOLR_ROLES},
            kafka={user: secrets.token_urlsafe(24) for user in KAFKA_USERS},
        )
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"solr": created.solr, "kafka": created.kafka}, out, indent=2)
        return created

    def solr_user(self, component: str) -> tuple[str, str]:
        """(user, password) the component authenticates to Solr with."""
        user = COMPONENTS[component][0]
        if user is None:
            raise KeyError(f"{component} does not use Solr")
        return user, self.solr[user]

    def kafka_user(self, component: str) -> tuple[str, str]:
        """(user, password) the component authenticates to Kafka with."""
        user = COMPONENTS[component][1]
        if user is None:
            raise KeyError(f"{component} does not use Kafka")
        return user, self.kafka[user]

    def __repr__(self) -> str:
        return f"StackCredentials(solr users={sorted(self.solr)}, kafka users={sorted(self.kafka)})"


def kafka_client_options(user: str, password: str) -> dict[str, str]:
    """The librdkafka options of a SCRAM client (``kafka.client`` in the settings)."""
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": MECHANISM,
        "sasl.username": user,
        "sasl.password": password,
    }


def kafka_scram_arguments(credentials: StackCredentials) -> list[str]:
    """``kafka-storage format`` arguments that create every SCRAM user (KIP-900)."""
    arguments: list[str] = []
    for user, password in credentials.kafka.items():
        arguments += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
    return arguments


def kafka_security_properties(credentials: StackCredentials) -> list[str]:
    """The broker properties of the secured listeners (see the module docstring)."""
    password = credentials.kafka["admin"]
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return [
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f'listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram} required username="admin" password="{password}";',
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f'listener.name.controller.plain.sasl.jaas.config={plain} required username="admin" password="{password}" user_admin="{password}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin",
        "allow.everyone.if.no.acl.found=false",
    ]


def kafka_acls(settings: Settings) -> list[tuple[str, str, str, str, str]]:
    """(user, resource type, pattern type, name, operation) of every ACL the secured stack
    grants. Groups and transactional ids are granted by prefix: ``imagetag-`` for ours,
    ``spark-kafka-`` for the consumer groups of Spark's Kafka source."""
    kafka = settings.kafka
    sinks = (kafka.topic_review, kafka.topic_dlq, kafka.topic_ledger)
    acls: list[tuple[str, str, str, str, str]] = []

    def topic(user: str, name: str, *operations: str) -> None:
        acls.extend((user, "TOPIC", "LITERAL", name, op) for op in ("DESCRIBE", *operations))

    def transactions_and_groups(user: str) -> None:
        for prefix in ("imagetag-", "spark-kafka-"):
            acls.append((user, "GROUP", "PREFIXED", prefix, "READ"))
        acls.append((user, "TRANSACTIONAL_ID", "PREFIXED", "imagetag-", "WRITE"))
        acls.append((user, "TRANSACTIONAL_ID", "PREFIXED", "imagetag-", "DESCRIBE"))
        acls.append((user, "BROKER", "LITERAL", "kafka-cluster", "IDEMPOTENT_WRITE"))

    topic("producer", kafka.topic_images, "WRITE")
    acls.append(("producer", "BROKER", "LITERAL", "kafka-cluster", "IDEMPOTENT_WRITE"))
    topic("stream", kafka.topic_images, "READ")
    for name in sinks:
        topic("stream", name, "READ", "WRITE")
    transactions_and_groups("stream")
    # the group the stream commits its progress to, for Kafka's lag tools (kafka.stream_group)
    acls.append(("stream", "GROUP", "LITERAL", kafka.stream_group, "READ"))
    for name in (kafka.topic_images, *sinks):
        topic("tools", name, "READ", "WRITE")
    transactions_and_groups("tools")
    acls.append(("tools", "GROUP", "LITERAL", kafka.stream_group, "DESCRIBE"))
    return acls


def apply_kafka_acls(admin_config: dict[str, str], settings: Settings) -> None:
    """Create :func:`kafka_acls` as the broker's admin (creating an existing ACL is a no-op)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    bindings = [
        AclBinding(
            ResourceType[resource],
            name,
            ResourcePatternType[pattern],
            f"User:{user}",
            "*",
            AclOperation[operation],
            AclPermissionType.ALLOW,
        )
        for user, resource, pattern, name, operation in kafka_acls(settings)
    ]
    admin = AdminClient({**admin_config, "log_level": 3})
    for future in admin.create_acls(bindings, request_timeout=30).values():
        future.result()


def solr_password_hash(password: str, salt: bytes) -> str:
    """A ``BasicAuthPlugin`` credential: base64(sha256(sha256(salt + password))), a space,
    base64(salt), as Solr's ``Sha256AuthenticationProvider`` checks it."""
    first = hashlib.sha256(salt + password.encode()).digest()
    return f"{base64.b64encode(hashlib.sha256(first).digest()).decode()} {base64.b64encode(salt).decode()}"


def solr_security_json(credentials: StackCredentials) -> dict[str, Any]:
    """Solr's ``security.json``: every request authenticated (``blockUnknown``), and
    rule-based permissions: read for every role, update for the indexer and admin, everything
    else (collections, aliases, configsets, security itself) for admin only."""
    return {
        "authentication": {
            "class": "solr.BasicAuthPlugin",
            "blockUnknown": True,
            "forwardCredentials": False,
            "realm": "imagetag",
            "credentials": {
                user: solr_password_hash(password, secrets.token_bytes(32))
                for user, password in credentials.solr.items()
            },
        },
        "authorization": {
            "class": "solr.RuleBasedAuthorizationPlugin",
            "user-role": SOLR_ROLES,
            "permissions": [
                {"name": "read", "role": ["searcher", "indexer", "admin"]},
                {"name": "update", "role": ["indexer", "admin"]},
                {"name": "all", "role": ["admin"]},
            ],
        },
    }


def write_solr_security(zk_address: str, credentials: StackCredentials) -> bool:
    """Write Solr's ``/security.json`` to the ZooKeeper at ``zk_address`` unless a non-empty
    one is there (SolrCloud creates an empty ``{}``); True when it wrote it."""
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=zk_address, timeout=10)
    zk.start(timeout=30)
    try:
        if zk.exists("/security.json") and zk.get("/security.json")[0].strip(b"{} \n"):
            return False
        body = json.dumps(solr_security_json(credentials)).encode()
        if zk.exists("/security.json"):
            zk.set("/security.json", body)
        else:
            zk.create("/security.json", body, makepath=True)
        return True
    finally:
        zk.stop()
        zk.close()


def ensure_solr_security(
    zk_address: str, base_url: str, credentials: StackCredentials, timeout_s: float = 60.0
) -> None:
    """Make the local Solr node secured (:func:`write_solr_security`), then wait until Solr
    enforces it (an anonymous request is refused, admin's is answered). Raises ServiceError
    when it does not take effect in time."""
    import time

    import requests

    from imagetag.errors import ServiceError

    write_solr_security(zk_address, credentials)
    probe = f"{base_url}/admin/info/system"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            anonymous = requests.get(probe, timeout=3).status_code
            admin = requests.get(probe, auth=credentials.solr_user("admin"), timeout=3).status_code
        except requests.RequestException:
            anonymous = admin = 0
        if anonymous == 401 and admin == 200:
            return
        time.sleep(0.5)
    raise ServiceError("solr", base_url, "security.json did not take effect in time")
