"""The embedded local stack: a real Kafka 4 broker (KRaft), a real SolrCloud 9 node and, when
``spark.master`` names a standalone master on loopback (``spark://127.0.0.1:7077``), a real
Spark standalone cluster (one master, one worker) from pyspark's own ``spark-class``.

Kafka and Solr run from the jars ``make setup`` fetched from Maven Central into ``.jvm/`` (one
folder, and so one classpath, per service), Spark from the pyspark wheel's ``jars/``, on loopback, with data under ``<stack.home>/`` and logs under
``<stack.home>/logs/``. Their ports come from the addresses in the settings
(``kafka.bootstrap_servers``, ``solr.url``), so the code that talks to the services and the code
that starts them can never disagree.

``up`` is a no-op for a service already running from this stack home; ``down`` stops only the
processes whose pid files this stack wrote (and checks the process is really ours first).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from imagetag.errors import ServiceError
from imagetag.settings import LOOPBACK, Settings
from imagetag.spark import pyspark_version, spark_home, standalone_master

if TYPE_CHECKING:
    from imagetag.secure_stack import StackCredentials

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JVM_SOURCES = PROJECT_ROOT / "jvm"
SOLR_HOME_TEMPLATE = PROJECT_ROOT / "solr_config" / "home"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    pid: int | None
    version: str | None
    rss_mb: float | None
    log: Path

    def line(self) -> str:
        if not self.running:
            return f"{self.name:<12} stopped  {self.address}  (log: {self.log})"
        rss = f"  rss={self.rss_mb:.0f}MB" if self.rss_mb is not None else ""
        return f"{self.name:<12} {self.version or '?':<8} {self.address}  pid={self.pid}{rss}"


class _Service:
    """One JVM process of the stack: how to prepare, start, probe and name it."""

    name = ""

    def __init__(self, settings: Settings, home: Path) -> None:
        self.settings = settings
        self.home = home
        self.dir = home / self.name
        self.logs = home / "logs"
        self.pid_file = home / f"{self.name}.pid"
        self.log_file = self.logs / f"{self.name}.log"
        self.out_file = self.logs / f"{self.name}.out"
        self.jars = settings.stack.jvm_dir.resolve() / self.name
        self.host, self.port = self.endpoint(settings)

    # -- to be provided by each service ------------------------------------------------------
    def endpoint(self, settings: Settings) -> tuple[str, int]:
        """(host, port) the service listens on, from the addresses in the settings."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def prepare(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def version(self) -> str | None:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The process environment (None: this one's)."""
        return None

    @functools.cached_property
    def credentials(self) -> StackCredentials:
        """The secured stack's users and passwords (read once: every probe uses them)."""
        from imagetag.secure_stack import StackCredentials

        return StackCredentials.load_or_create(self.home)

    # -- shared mechanics --------------------------------------------------------------------
    def marker(self) -> str:
        """A JVM flag that identifies this service of this stack home in the process table."""
        return f"-Dimagetag.stack={self.home.resolve()}/{self.name}"

    def pid(self) -> int | None:
        """The pid from our pid file, if that process is alive and really ours."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if self.marker().encode() in cmdline else None

    def rss_mb(self, pid: int) -> float | None:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(
            name=self.name,
            address=self.address,
            running=pid is not None,
            pid=pid,
            version=self.version() if pid else None,
            rss_mb=self.rss_mb(pid) if pid else None,
            log=self.log_file,
        )

    def fail(self, reason: str) -> ServiceError:
        return ServiceError(self.name, self.address, reason, log=str(self.log_file))

    def start(self) -> int:
        """Start the process (detached) unless it is already running; return its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        if self.host not in LOOPBACK:
            raise self.fail(
                "the local stack only runs on loopback; this address is a real cluster, "
                "so there is nothing to start"
            )
        if not self.jars.is_dir() or not any(self.jars.glob("*.jar")):
            raise self.fail(f"jars missing in {self.jars}; run `make setup`")
        if _port_open(self.host, self.port):
            raise self.fail("port already in use by another process")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.out_file, "ab") as out:
            process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=self.environment(),
                start_new_session=True,  # survives this CLI; down() signals the whole group
            )
        self.pid_file.write_text(f"{process.pid}\n")
        log.debug("%s started, pid %d", self.name, process.pid)
        return process.pid

    def wait_ready(self, pid: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise self.fail(f"process exited during start; last lines: {_tail(self.out_file)}")
            if self.ready():
                return
            time.sleep(0.5)
        raise self.fail("did not answer in time")

    def stop(self, timeout_s: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True


def kafka_cluster_id() -> str:
    """A new KRaft cluster id as Kafka's own ``Uuid.randomUuid()`` makes it: a random UUID,
    base64url without padding, drawn again while it starts with "-" (which a command line
    would read as an option: one format in 64 failed that way, ``expected one argument``)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaService(_Service):
    """Single combined broker+controller in KRaft mode."""

    name = "kafka"

    def __init__(self, settings: Settings, home: Path) -> None:
        super().__init__(settings, home)
        self.controller_port = settings.stack.kafka_controller_port
        self.properties = self.dir / "server.properties"

    def endpoint(self, settings: Settings) -> tuple[str, int]:
        return settings.kafka_host(), settings.kafka_port()

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            _java(),
            f"-Xms{min_heap(heap)}",
            f"-Xmx{heap}",
            self.marker(),
            f"-Dimagetag.log={self.log_file}",
            f"-Dlog4j2.configurationFile={JVM_SOURCES / 'kafka' / 'log4j2.properties'}",
            "-cp",
            f"{self.jars}/*",
            main,
            *args,
        ]

    def tool_command(self, main: str, *args: str) -> list[str]:
        """A Kafka tool class on the stack's Kafka jars, e.g.
        ``org.apache.kafka.tools.consumer.group.ConsumerGroupCommand`` (what
        ``kafka-consumer-groups.sh`` runs)."""
        return [_java(), "-Xmx256m", "-cp", f"{self.jars}/*", main, *args]

    def prepare(self) -> None:
        host = self.host
        if self.settings.stack.secure:
            from imagetag.secure_stack import kafka_security_properties

            protocol = "SASL_PLAINTEXT"
            security = kafka_security_properties(self.credentials)
        else:
            protocol, security = "PLAINTEXT", []
        lines = [
            "# written by `imagetag stack up`; edit the settings, not this file",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={host}:{self.controller_port}",
            f"listeners={protocol}://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
            f"advertised.listeners={protocol}://{host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={protocol}",
            f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:{protocol}",
            *security,
            f"log.dirs={self.dir / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Topics come from `imagetag init`, never from a typo in a client.
            "auto.create.topics.enable=false",
            # images are large messages; topics raise max.message.bytes themselves
            f"message.max.bytes={_message_limit(self.settings)}",
            f"replica.fetch.max.bytes={_message_limit(self.settings)}",
            "",
        ]
        self.properties.touch(mode=0o600)  # it holds the broker's own password when secured
        self.properties.chmod(0o600)
        self.properties.write_text("\n".join(lines))
        cluster_id_file = self.dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(kafka_cluster_id() + "\n")
        cluster_id = cluster_id_file.read_text().strip()
        # -g (--ignore-formatted) makes a second format of existing storage harmless. A secured
        # stack's SCRAM users are written at format time (KIP-900), so they exist before the
        # broker's first start.
        scram: list[str] = []
        if self.settings.stack.secure:
            from imagetag.secure_stack import kafka_scram_arguments

            scram = kafka_scram_arguments(self.credentials)
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",  # one argument, whatever the id starts with
                "-c",
                str(self.properties),
                "--standalone",
                "-g",
                *scram,
            ),
            capture_output=True,
            text=True,
            cwd=self.dir,
        )
        if result.returncode != 0:
            raise self.fail(f"storage format failed: {(result.stderr or result.stdout).strip()}")

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.properties), heap=self.settings.stack.kafka_heap)

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings of the stack's own probes: the broker's admin when secured."""
        config = {"bootstrap.servers": self.address}
        if self.settings.stack.secure:
            from imagetag.secure_stack import kafka_client_options

            config |= kafka_client_options(*self.credentials.kafka_user("admin"))
        return config

    def secure(self) -> None:
        """The ACLs of the secured stack's users (``imagetag.secure_stack.kafka_acls``)."""
        from imagetag.secure_stack import apply_kafka_acls

        apply_kafka_acls(self.admin_config(), self.settings)

    def ready(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.admin_config(), "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=3)
        except Exception:  # KafkaException while the broker finishes starting
            return False
        return bool(metadata.brokers)

    def version(self) -> str | None:
        for jar in self.jars.glob("kafka_2.13-*.jar"):
            match = re.match(r"kafka_2\.13-(.+)\.jar$", jar.name)
            if match:
                return match.group(1)
        return None


class SolrService(_Service):
    """One SolrCloud node with an embedded ZooKeeper (client port = Solr port + 1000)."""

    name = "solr"

    def __init__(self, settings: Settings, home: Path) -> None:
        super().__init__(settings, home)
        self.solr_home = self.dir / "home"
        self.base_url = settings.solr.url.rstrip("/")

    def endpoint(self, settings: Settings) -> tuple[str, int]:
        return settings.solr_host(), settings.solr_port()

    def prepare(self) -> None:
        self.solr_home.mkdir(parents=True, exist_ok=True)
        for name in ("solr.xml", "zoo.cfg"):
            shutil.copyfile(SOLR_HOME_TEMPLATE / name, self.solr_home / name)
        if _port_open(self.host, self.port + 1000):
            raise ServiceError(
                "solr",
                f"{self.host}:{self.port + 1000}",
                "embedded ZooKeeper port already in use by another process",
                log=str(self.log_file),
            )

    def command(self) -> list[str]:
        heap = self.settings.stack.solr_heap
        return [
            _java(),
            f"-Xms{min_heap(heap)}",
            f"-Xmx{heap}",
            self.marker(),
            "-DzkRun",
            f"-Dhost={self.host}",
            f"-DhostPort={self.port}",
            f"-Dsolr.log.dir={self.logs}",
            f"-Dimagetag.log={self.log_file}",
            f"-Dlog4j2.configurationFile={JVM_SOURCES / 'solr' / 'log4j2.properties'}",
            "-Dsolr.disableConfigSetsCreateAuthChecks=true",
            "-cp",
            f"{self.jars}/*",
            str(JVM_SOURCES / "solr" / "SolrLauncher.java"),
            str(self.solr_home),
            str(self.port),
        ]

    def system_info(self) -> dict[str, Any] | None:
        return _get_json(
            f"{self.base_url}/admin/info/system", {"wt": "json"}, auth=self.admin_auth()
        )

    def admin_auth(self) -> tuple[str, str] | None:
        """The stack's own probes run as Solr's admin when the stack is secured."""
        if not self.settings.stack.secure:
            return None
        return self.credentials.solr_user("admin")

    def secure(self) -> None:
        """Turn on (or check) authentication and authorization (``imagetag.secure_stack``)."""
        from imagetag.secure_stack import ensure_solr_security

        ensure_solr_security(f"{self.host}:{self.port + 1000}", self.base_url, self.credentials)

    def ready(self) -> bool:
        info = self.system_info()
        return info is not None and info.get("mode") == "solrcloud"

    def version(self) -> str | None:
        info = self.system_info()
        lucene = info.get("lucene") if info else None
        return str(lucene.get("solr-spec-version")) if isinstance(lucene, dict) else None


class SparkMasterService(_Service):
    """A Spark standalone master (``spark-class org.apache.spark.deploy.master.Master``) on the
    address ``spark.master`` names; its web UI (and the JSON status read here) on port + 1000."""

    name = "spark-master"
    main = "org.apache.spark.deploy.master.Master"

    def __init__(self, settings: Settings, home: Path) -> None:
        super().__init__(settings, home)
        self.master_port = (standalone_master(settings) or ("", 0))[1]
        self.ui_port = self.port + 1000
        self.jars = spark_home() / "jars"
        self.log_file = self.out_file  # Spark's daemons log to the console: the .out file

    def endpoint(self, settings: Settings) -> tuple[str, int]:
        return standalone_master(settings) or ("", 0)

    def prepare(self) -> None:
        if _port_open(self.host, self.ui_port):
            raise self.fail(f"web UI port {self.ui_port} already in use by another process")

    def environment(self) -> dict[str, str]:
        """pyspark's own Spark home, loopback only (``SPARK_LOCAL_IP``: without it a worker
        registers under the machine's other address), our marker in the daemon's JVM flags."""
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_DAEMON_MEMORY": self.settings.stack.spark_daemon_heap,
            "SPARK_DAEMON_JAVA_OPTS": self.marker(),
            "SPARK_NO_DAEMONIZE": "1",
        }

    def command(self) -> list[str]:
        return [str(spark_home() / "bin" / "spark-class"), self.main, *self.arguments()]

    def arguments(self) -> list[str]:
        """The daemon's own arguments: where it listens (and, for a worker, what it offers)."""
        return ["--host", self.host, "--port", str(self.port), "--webui-port", str(self.ui_port)]

    def cluster_state(self) -> dict[str, Any] | None:
        """The master's ``/json/`` status (workers, applications), or None when it does not
        answer."""
        return _get_json(f"http://{self.host}:{self.master_port + 1000}/json/")

    def ready(self) -> bool:
        state = self.cluster_state()
        return state is not None and state.get("status") == "ALIVE"

    def version(self) -> str | None:
        return pyspark_version()


class SparkWorkerService(SparkMasterService):
    """One standalone worker offering ``stack.spark_worker_cores`` cores and
    ``stack.spark_worker_memory`` to the master's applications (port = master's + 1, web UI
    = master's + 1001); ready once the master lists it ALIVE."""

    name = "spark-worker"
    main = "org.apache.spark.deploy.worker.Worker"

    def __init__(self, settings: Settings, home: Path) -> None:
        super().__init__(settings, home)
        self.ui_port = self.master_port + 1001

    def endpoint(self, settings: Settings) -> tuple[str, int]:
        host, master_port = standalone_master(settings) or ("", 0)
        return host, master_port + 1

    def arguments(self) -> list[str]:
        stack = self.settings.stack
        return [
            f"spark://{self.host}:{self.master_port}",
            *super().arguments(),
            "--cores",
            str(stack.spark_worker_cores),
            "--memory",
            stack.spark_worker_memory,
            "--work-dir",
            str(self.dir / "work"),
        ]

    def ready(self) -> bool:
        state = self.cluster_state()
        workers = state.get("workers", []) if state else []
        return any(
            w.get("state") == "ALIVE" and w.get("host") == self.host and w.get("port") == self.port
            for w in workers
        )


class LocalStack:
    """The Kafka and Solr processes under one stack home, and the Spark standalone master and
    worker when ``spark.master`` is a ``spark://`` address on loopback."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.stack.home.resolve()
        self.services: list[_Service] = [
            KafkaService(settings, self.home),
            SolrService(settings, self.home),
        ]
        if standalone_master(settings) is not None:
            self.services += [
                SparkMasterService(settings, self.home),
                SparkWorkerService(settings, self.home),
            ]

    def up(self) -> list[ServiceStatus]:
        """Start what is not running and wait until every service answers.

        Raises ServiceError (one line: service, address, log file) when Java is missing, a port
        is taken, or a service does not come up.
        """
        _java()  # fail early and clearly when Java is missing
        started = [(service, service.start()) for service in self.services]
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        for service, pid in started:
            service.wait_ready(pid, deadline)
            if self.settings.stack.secure and isinstance(service, SolrService | KafkaService):
                service.secure()
        return self.status()

    def down(self, names: Iterable[str] | None = None) -> list[str]:
        """Stop the processes this stack started (only those ``names`` when given); return the
        names of those stopped."""
        wanted = None if names is None else set(names)
        return [
            service.name
            for service in reversed(self.services)
            if (wanted is None or service.name in wanted) and service.stop()
        ]

    def status(self) -> list[ServiceStatus]:
        return [service.status() for service in self.services]


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    if candidate and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise ServiceError("stack", "local", "Java not found: install Java 17+ or set JAVA_HOME")
    return found


def min_heap(heap: str) -> str:
    """Initial heap: half the maximum (keeps the resting footprint modest)."""
    match = re.fullmatch(r"(\d+)([kmgKMG])", heap)
    if not match:
        return heap
    value, unit = int(match.group(1)), match.group(2).lower()
    in_mb = value * {"k": 1 / 1024, "m": 1, "g": 1024}[unit]
    return f"{max(64, int(in_mb // 2))}m"


def _message_limit(settings: Settings) -> int:
    """Largest Kafka message: the image limit plus room for the Avro envelope and metadata."""
    return settings.limits.max_bytes + 1024 * 1024


def _get_json(
    url: str, params: dict[str, str] | None = None, auth: tuple[str, str] | None = None
) -> dict[str, Any] | None:
    """A probe: the JSON ``url`` answers with HTTP 200, or None (not up, refused, an error)."""
    try:
        response = requests.get(url, params=params, auth=auth, timeout=3)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by us) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(no output)"
