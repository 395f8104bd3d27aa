"""One frozen, typed settings object for the whole project.

Loaded once in ``main()`` (``Settings.load()``) and passed down explicitly. Sources, lowest to
highest priority: the defaults below, an optional YAML file (``imagetag.yaml`` in the working
directory, or the path in ``IMAGETAG_CONFIG``), then environment variables ``IMAGETAG_*`` where a
double underscore separates nesting levels, e.g. ``IMAGETAG_KAFKA__BOOTSTRAP_SERVERS``.

Unknown keys are an error in every source, so a typo never silently falls back to a default.
Nothing else in the code base hard-codes an address, a topic name or a path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from imagetag.errors import ConfigError

ENV_PREFIX = "IMAGETAG_"
CONFIG_ENV = "IMAGETAG_CONFIG"
DEFAULT_CONFIG_FILE = "imagetag.yaml"
# The host names of this machine's loopback: where the local stack may start services.
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Where the brokers are, how clients talk to them, and the topic layout."""

    bootstrap_servers: str = "localhost:9092"
    # Passed through to every client (librdkafka / Java property names), e.g.
    # {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": ..., ...}.
    # Values are secret strings: they are never printed.
    client: dict[str, SecretStr] = Field(default_factory=dict)
    topic_images: str = "images"
    topic_dlq: str = "images.dlq"
    topic_review: str = "images.review"
    # Compacted, one partition: the last committed batch of each transactional sink.
    topic_ledger: str = "images.ledger"
    # The consumer group the stream commits each finished micro-batch's end offsets to, for
    # Kafka's own lag tools only (kafka-consumer-groups.sh, Burrow): the stream's checkpoint,
    # not this group, says where it resumes.
    stream_group: str = "imagetag-stream"
    partitions: int = Field(default=2, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # Which Python client the producer uses: librdkafka's (fast, default) or pure Python.
    client_library: Literal["confluent", "kafka-python"] = "confluent"

    def client_config(self) -> dict[str, str]:
        """librdkafka-style configuration: bootstrap servers plus the pass-through options."""
        config = {k: v.get_secret_value() for k, v in self.client.items()}
        config["bootstrap.servers"] = self.bootstrap_servers
        return config

    def java_client_config(self) -> dict[str, str]:
        """The same for a Java client (Spark's Kafka source and sink): librdkafka's
        ``sasl.username`` / ``sasl.password`` become the ``sasl.jaas.config`` of the SCRAM or
        PLAIN login module that ``sasl.mechanism`` names; every other option passes as it is."""
        config = self.client_config()
        username, password = config.pop("sasl.username", None), config.pop("sasl.password", None)
        if username is not None and password is not None and "sasl.jaas.config" not in config:
            mechanism = config.get("sasl.mechanism", "PLAIN").upper()
            module = (
                "org.apache.kafka.common.security.scram.ScramLoginModule"
                if mechanism.startswith("SCRAM-")
                else "org.apache.kafka.common.security.plain.PlainLoginModule"
            )
            config["sasl.jaas.config"] = (
                f'{module} required username="{_jaas_quote(username)}" '
                f'password="{_jaas_quote(password)}";'
            )
        return config


class SolrSettings(_Section):
    """Solr's address (HTTP base URL, or ZooKeeper hosts for SolrCloud) and the collection alias."""

    url: str = "http://localhost:8983/solr"
    # When set, live Solr nodes are read from ZooKeeper (SolrCloud) instead of using ``url``.
    zk_hosts: str | None = None
    collection: str = "images"  # an alias; the backing collection is images_<generation>
    configset: str = "imagetag"
    shards: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # How soon an upsert is searchable (a soft commit; autowarm is 0). Measured on the bench at
    # half load (bench_stream, 2 cores): 1000 ms gave the plain loop p50/p99 1.72/4.12 s and
    # the stream 7.52/11.93 s; 250 ms gave 0.94/1.50 s and 4.98/8.54 s, throughput unchanged.
    commit_within_ms: int = Field(default=250, ge=0)
    batch_size: int = Field(default=500, ge=1)
    timeout_s: float = Field(default=30.0, gt=0)
    username: str | None = None
    password: SecretStr | None = None


class SparkSettings(_Section):
    """Spark master and resources; local mode on a 2-core machine by default."""

    master: str = "local[2]"
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    # The partitions of Spark's shuffles (the batch jobs' joins and aggregations). The stream has
    # none: each micro-batch is tagged in one task per Kafka partition it read from.
    shuffle_partitions: int = Field(default=2, ge=1)
    ui_enabled: bool = False
    # How often the stream looks for new records (a look without any runs no batch); a batch
    # that takes longer is followed at once by the next.
    trigger_seconds: float = Field(default=0.25, gt=0)
    max_offsets_per_trigger: int = Field(default=5000, ge=1)
    # SIGTERM stops the stream after its running micro-batch, and the process this long after
    # the signal at the latest (a batch stuck on an unreachable service is re-run on restart).
    stop_timeout_seconds: float = Field(default=30.0, gt=0)
    # The stream tags each image id once within this window (Spark watermark syntax).
    dedupe_window: str = "1 hour"
    # Extra Spark properties, passed as they are (e.g. {"spark.executor.cores": "2"}).
    conf: dict[str, str] = Field(default_factory=dict)


class ImageLimits(_Section):
    """What the producer and the decoder accept."""

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_side: int = Field(default=20_000, ge=1)


class MetricsSettings(_Section):
    """Prometheus endpoints (``/metrics``) of the long-running jobs. A port of null turns an
    endpoint off; 0 takes any free port (the job logs which: the tests use it)."""

    host: str = "127.0.0.1"
    stream_port: int | None = Field(default=9108, ge=0, le=65535)
    backfill_port: int | None = Field(default=9109, ge=0, le=65535)


class StackSettings(_Section):
    """The embedded local stack (``imagetag stack``). Its ports come from the addresses above."""

    home: Path = Path(".stack")
    jvm_dir: Path = Path(".jvm")
    kafka_controller_port: int = 9093
    kafka_heap: str = "1g"
    solr_heap: str = "1g"
    start_timeout_s: float = Field(default=120.0, gt=0)
    # Kafka with SASL/SCRAM + ACLs and Solr with BasicAuth + rule-based authorization, users
    # and passwords generated into <home>/credentials.json (imagetag.secure_stack). Off by
    # default: the two README commands run on an open stack.
    secure: bool = False
    # The Spark standalone cluster, started when spark.master is spark://127.0.0.1:<port>
    # (worker on port + 1, web UIs on port + 1000 and + 1001).
    spark_worker_cores: int = Field(default=2, ge=1)
    spark_worker_memory: str = "3g"
    spark_daemon_heap: str = "512m"


class WebSettings(_Section):
    """``imagetag web``: where it listens, what a page shows, and what an upload may be.

    A port of 0 takes any free port (the app logs ``web on http://...``: the tests use it).
    The upload limits are checked before anything is decoded: the request's length against
    ``max_upload_bytes`` before its body is read, the image header's size against
    ``max_upload_pixels`` / ``max_upload_side`` before the pixels are."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    threads: int = Field(default=4, ge=1, le=64)
    page_size: int = Field(default=24, ge=1, le=200)
    # Results past this rank are not paged to (deep paging is the slowest Solr query).
    max_results: int = Field(default=10_000, ge=1)
    similar: int = Field(default=12, ge=1, le=100)
    # Near-duplicates: pHashes at most this many bits apart (of 64), found through the four
    # 16-bit band fields (imagetag.documents.phash_bands) and verified in the app; at most
    # ``near_duplicate_candidates`` candidates are verified per image.
    near_duplicate_distance: int = Field(default=4, ge=0, le=11)
    near_duplicate_candidates: int = Field(default=2000, ge=1, le=100_000)
    max_upload_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    max_upload_pixels: int = Field(default=16_000_000, ge=1)
    max_upload_side: int = Field(default=8192, ge=1)
    # Part 2: login, upload to ingest, review and corrections (imagetag.web.auth / .review).
    # Users (argon2 hashes, roles) live in ``users_file``; the session cookie is signed with
    # ``secret_key``, else with a key generated once into ``<users_file>.secret`` (0600).
    users_file: str = ".stack/web/users.json"
    secret_key: SecretStr | None = None
    secure_cookies: bool = False  # the cookie's Secure flag (set it behind HTTPS)
    session_hours: float = Field(default=12.0, gt=0)
    login_required_for_search: bool = False
    # Failed logins: after ``login_free_failures`` per user or per client address, each new
    # attempt waits ``login_delay_s`` doubling with each failure, at most ``login_max_delay_s``.
    login_free_failures: int = Field(default=5, ge=1)
    login_delay_s: float = Field(default=2.0, gt=0)
    login_max_delay_s: float = Field(default=300.0, gt=0)
    max_upload_files: int = Field(default=20, ge=1, le=1000)
    # The review queue's materialised view: SQLite fed from images.review and images.dlq.
    view_db: str = ".stack/web/view.sqlite"
    view_group: str = "imagetag-web-view"
    view_poll_s: float = Field(default=1.0, gt=0)
    # Solr user for the one write the app makes (a correction's atomic update of ``label``):
    # the indexer; on a secured local stack taken from its credentials when unset.
    label_username: str | None = None
    label_password: SecretStr | None = None


class Settings(BaseSettings):
    """Everything configurable. Frozen; build it once with :meth:`load`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    solr: SolrSettings = SolrSettings()
    spark: SparkSettings = SparkSettings()
    limits: ImageLimits = ImageLimits()
    stack: StackSettings = StackSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    model_store: str = "models"  # a local path or any Hadoop filesystem URI Spark can write
    checkpoint_dir: str = ".stack/checkpoints"
    archive_dir: str = ".stack/archive"
    vote_threshold: float = Field(default=0.40, gt=0, le=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables are merged by load() itself, so that they win over the YAML
        # file and so that an unknown IMAGETAG_* variable is an error, not silently ignored.
        return (init_settings,)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build the settings from defaults, the YAML file, ``IMAGETAG_*`` and ``overrides``.

        Raises ConfigError naming the offending key for an unknown key or a bad value.
        """
        _reject_unknown_env()
        data = _read_yaml(config_file)
        _deep_update(data, cls._env_values())
        _deep_update(data, overrides)
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {_first_error(exc)}") from exc

    @classmethod
    def _env_values(cls) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, value in os.environ.items():
            if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
                continue
            path = key[len(ENV_PREFIX) :].lower().split("__")
            node = values
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _parse_env_value(value)
        return values

    def derive(self, **changes: Any) -> Settings:
        """A copy with some values changed; a dict for a section changes only those keys.

        ``settings.derive(kafka={"topic_images": "t1"}, vote_threshold=0.5)``. Used by tests and
        jobs that need a variant (another topic, another collection) of the loaded settings.
        """
        update: dict[str, Any] = {}
        for key, value in changes.items():
            current = getattr(self, key)
            if isinstance(value, dict) and isinstance(current, BaseModel):
                update[key] = type(current).model_validate({**dict(current), **value})
            else:
                update[key] = value
        return type(self).model_validate({**dict(self), **update})

    # -- derived addresses -------------------------------------------------------------------

    def kafka_port(self) -> int:
        """Port of the first bootstrap server (the one the local stack listens on)."""
        first = self.kafka.bootstrap_servers.split(",")[0].strip()
        return int(first.rsplit(":", 1)[1])

    def kafka_host(self) -> str:
        first = self.kafka.bootstrap_servers.split(",")[0].strip()
        return first.rsplit(":", 1)[0]

    def solr_port(self) -> int:
        parsed = urlparse(self.solr.url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    def solr_host(self) -> str:
        return urlparse(self.solr.url).hostname or "localhost"

    def child_env(self) -> dict[str, str]:
        """The environment for a child process (``imagetag stream``, a batch job) that should
        load exactly these settings: the parent's environment without its ``IMAGETAG_*``
        variables, plus one ``IMAGETAG_*`` variable per setting (secrets in clear: the child
        needs them; never print the result)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}

        def flatten(name: str, value: Any) -> None:
            if isinstance(value, dict) and not name.endswith(("__CLIENT", "__CONF")):
                for key, inner in value.items():
                    flatten(f"{name}__{key.upper()}" if name else key.upper(), inner)
            elif value is not None and value != {}:
                env[f"{ENV_PREFIX}{name}"] = (
                    json.dumps(value) if isinstance(value, dict) else str(value)
                )

        flatten("", self.plaintext_dict())
        return env

    # -- the one way secrets leave their SecretStr -------------------------------------------

    def plaintext_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able data with every secret **in clear** (the Kafka
        client options, the Solr password). For the processes that must authenticate with
        them (:meth:`for_executors`, :meth:`child_env`), never for printing: ``public_dict``,
        ``repr`` and ``model_dump_json`` keep them masked (in the spirit of Quix Streams'
        ``as_librdkafka_dict(plaintext_secrets=True)``)."""
        return _reveal(self.model_dump(mode="python"))

    def for_executors(self) -> str:
        """The settings as JSON for code that runs in Spark executors (``mapInPandas`` and
        ``foreachPartition`` bodies), secrets in clear so that executors authenticate as the
        driver does; rebuild them there with :meth:`from_executors`. Never log the result."""
        return json.dumps(self.plaintext_dict())

    @classmethod
    def from_executors(cls, text: str) -> Settings:
        """The settings :meth:`for_executors` serialised."""
        return cls.model_validate_json(text)

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked (for ``imagetag config``)."""
        return self.model_dump(mode="json")


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _reveal(value: Any) -> Any:
    """``model_dump(mode="python")`` output as JSON-able data, secrets revealed."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(inner) for inner in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _parse_env_value(value: str) -> Any:
    """Env values may be JSON/YAML scalars or mappings (``{"a": "b"}``); plain text otherwise."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, dict | list):
        return parsed
    return value


def _reject_unknown_env() -> None:
    fields = set(Settings.model_fields)
    for key in os.environ:
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        top = key[len(ENV_PREFIX) :].lower().split("__")[0]
        if top not in fields:
            raise ConfigError(
                f"unknown setting {key}: expected one of "
                + ", ".join(f"{ENV_PREFIX}{f.upper()}" for f in sorted(fields))
            )


def _read_yaml(config_file: str | Path | None) -> dict[str, Any]:
    path = Path(config_file or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    explicit = config_file is not None or CONFIG_ENV in os.environ
    if not path.exists():
        if explicit:
            raise ConfigError(f"settings file {path} does not exist")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping at the top level")
    return data


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}"
