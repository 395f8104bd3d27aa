"""The Spark session factory: local mode by default, a real cluster by setting the master.

The Kafka connector jars fetched by ``make setup`` (``.jvm/spark/``) are passed with
``spark.jars``; nothing is resolved through Ivy at run time.
"""

from __future__ import annotations

import atexit
import functools
import importlib.resources
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from imagetag.errors import ServiceError
from imagetag.settings import LOOPBACK, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def standalone_master(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of a ``spark://host:port`` master on loopback (one the stack can start),
    else None (``local[N]``, or a real cluster's master)."""
    master = settings.spark.master
    if not master.startswith("spark://"):
        return None
    host, _, port = master.removeprefix("spark://").partition(":")
    if host not in LOOPBACK or not port.isdigit():
        return None
    return host, int(port)


def spark_home() -> Path:
    """The Spark distribution inside the pyspark wheel (``bin/``, ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def pyspark_version() -> str:
    """The installed pyspark's version, from its package metadata (importing pyspark for it
    takes a second ``imagetag status`` need not spend)."""
    from importlib.metadata import version

    return version("pyspark")


def loopback_driver_conf(settings: Settings) -> dict[str, str]:
    """With the local stack's own standalone cluster, the driver listens on loopback too
    (executors connect back to it), as everything of the stack does; else nothing."""
    if standalone_master(settings) is None:
        return {}
    return {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


# The stream's driver JIT-compiles with C1 alone. Its JVM plans a micro-batch a few times a
# second and moves records (Kafka -> Arrow -> Python workers), and the C2 compiler was still
# compiling Spark's planner after 16,000 images: its threads took 1.7-2.8 CPU s of every 4000
# images drained, more than the JVM's own work. Measured on the bench, draining 4000 images
# four times (local[2]): the JVM's CPU per image 0.84-1.19 ms with C2, 0.44-0.62 with C1 alone,
# and images per CPU second of every process 111-115 against 124-130. The batch jobs keep C2
# (not measured with C1): training's Random Forest runs in the JVM, where compiled code's speed
# is what counts.
# With C1 alone the JVM reserves the code cache of a JVM without tiers, 48 MB, which Spark's
# code filled: the sweeper then evicted compiled methods and C1 compiled them again (at 109
# images/s, of every 60 s: sweeper 2.0-2.2 CPU s, C1 2.8-3.2); with the tiered JVM's 240 MB,
# the sweeper none, C1 1.0.
C1_ONLY = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"


def driver_java_conf(*, c1_only: bool = False) -> dict[str, str]:
    """The driver JVM's options: our log4j2 configuration (``imagetag/log4j2-spark.properties``:
    warnings, without the chatter of a healthy stream) unless Python logs at DEBUG (``imagetag
    -v``, which keeps Spark's default profile), and with ``c1_only`` the JIT's first tier alone
    (``C1_ONLY``, for the stream). ``spark.conf`` may override it."""
    options = []
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        config = importlib.resources.files("imagetag") / "log4j2-spark.properties"
        options.append(f"-Dlog4j2.configurationFile={config}")
    if c1_only:
        options.append(C1_ONLY)
    return {"spark.driver.extraJavaOptions": " ".join(options)} if options else {}


@functools.cache
def local_socket_conf() -> dict[str, str]:
    """A local master's Python workers talk to the JVM over Unix domain sockets, in a
    directory of this process's own (mode 0700, made once per process, removed at exit).

    Over loopback TCP each task of a micro-batch waited about 40 ms for its first Arrow batch
    (Linux's delayed-ACK time: most likely a small write held back by Nagle's algorithm; not
    traced further). Measured with ``mapInPandas`` over ``spark.range(1)``, collected, in a
    warm session: the Python side waited 41-45 ms for its one row over TCP, 1-4 ms over a Unix
    socket, and the job took 131-162 ms against 62-101.

    A Unix socket is not authenticated as Spark's TCP sockets are (a secret per connection):
    whoever may write to the socket file may connect, so the files are made in a directory
    only this user can enter. On a cluster the executors' sockets are theirs to configure
    (``spark.conf``)."""
    folder = tempfile.mkdtemp(prefix="imagetag-spark-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return {
        "spark.python.unix.domain.socket.enabled": "true",
        "spark.python.unix.domain.socket.dir": folder,
    }


def connector_jars(settings: Settings) -> list[Path]:
    """The jars of Spark's Kafka source/sink, as fetched by ``make setup``.

    Raises ServiceError when they are missing (``make setup`` was not run).
    """
    folder = settings.stack.jvm_dir / "spark"
    jars = sorted(folder.glob("*.jar"))
    if not jars:
        raise ServiceError("spark", str(folder), "Kafka connector jars missing; run `make setup`")
    return jars


def submitted() -> bool:
    """True in a driver that ``spark-submit`` launched: its JVM is already running, with the
    master, jars and memory spark-submit was given (pyspark connects to it through
    ``PYSPARK_GATEWAY_PORT``, the variable pyspark's own ``launch_gateway`` checks)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(
    settings: Settings, app_name: str = "imagetag", *, c1_only: bool = False
) -> SparkSession:
    """Return a SparkSession configured from ``settings.spark`` with the Kafka connector jars.

    In-process (``imagetag stream``): the master, memory and jars come from here, and Python
    workers use the interpreter running this code, so the venv's OpenCV and numpy are what the
    executors import. Under ``spark-submit`` (``imagetag submit``): those were decided on its
    command line (``imagetag.cluster``) and are left alone; the rest applies the same.
    ``c1_only``: the driver's JIT stops at C1 (``C1_ONLY``: the stream's).
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark_conf = settings.spark
    builder = SparkSession.builder.appName(app_name)
    if not submitted():
        builder = (
            builder.master(spark_conf.master)
            .config("spark.jars", ",".join(str(j.resolve()) for j in connector_jars(settings)))
            .config("spark.driver.memory", spark_conf.driver_memory)
            .config("spark.executor.memory", spark_conf.executor_memory)
        )
        for key, value in {
            **loopback_driver_conf(settings),
            **driver_java_conf(c1_only=c1_only),
        }.items():
            builder = builder.config(key, value)
        if spark_conf.master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # bind, and look up, no other
            for key, value in local_socket_conf().items():
                builder = builder.config(key, value)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(spark_conf.shuffle_partitions))
        .config("spark.ui.enabled", str(spark_conf.ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.python.worker.reuse", "true")
        # Our workers set OpenCV to one thread; Spark runs one Python worker per core.
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
    )
    for key, value in spark_conf.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    session.sparkContext.setLogLevel("INFO" if verbose else "WARN")
    return session
