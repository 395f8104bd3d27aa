"""``spark-submit`` for the jobs: the project's code, jars and Python shipped the way a cluster
needs them, not found through the driver's ``sys.path``.

    imagetag submit stream                     # = spark-submit [below] imagetag-submit.py stream
    imagetag submit backfill /data/photos
    imagetag submit --print train --data ...   # only print the command (for a cluster's edge node)

What a submission ships, and how:

- **the code**: the packages ``imagetag``, ``producers``, ``streaming`` and ``batch``, with their
  package data (the Avro schemas), as one zip passed with ``--py-files``. Spark puts it first on
  the driver's and every executor's ``sys.path``, so executors run the code the driver runs,
  whatever is installed on the worker machines.
- **the launcher**: ``imagetag-submit.py`` next to the zip, three lines that run
  ``imagetag.cli.main``; the jobs are imported as the packages they are, never run as
  ``__main__``, so the functions Spark ships to executors pickle by reference.
- **the JVM side**: the Kafka connector jars ``make setup`` fetched, with ``--jars``.
- **the executors' Python** (``spark.pyspark.python``): on this machine the project's own
  interpreter (``.venv``). A real cluster provides the same environment one of two ways:
  ship it with the job (``venv-pack`` or ``conda-pack`` a tarball, then
  ``spark.archives=env.tar.gz#env`` and ``spark.pyspark.python=./env/bin/python`` in
  ``spark.conf``), or run the workers from the project's image (``Dockerfile``), which has the
  same dependencies. A ``spark.pyspark.python`` in ``settings.spark.conf`` wins over the default.

Stopping: in client mode the driver's JVM is spark-submit's own, and a SIGTERM there runs its
shutdown hooks, which stop the SparkContext under the Python driver. So ``imagetag submit``
runs spark-submit in its own session and hands SIGTERM and SIGINT to the Python driver (the
JVM's child): the job stops the way ``imagetag stream`` does (the running micro-batch finishes,
``spark.stop_timeout_seconds`` bounds it), then the JVM exits with the driver's exit code.

The settings reach the driver as they reach any ``imagetag`` command (``imagetag.yaml``,
``IMAGETAG_*``), and the executors through ``Settings.for_executors``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from types import FrameType

from imagetag.settings import Settings
from imagetag.spark import (
    connector_jars,
    driver_java_conf,
    loopback_driver_conf,
    spark_home,
    standalone_master,
)

# The jobs spark-submit runs (the other commands need no Spark, or are the stack itself).
SUBMITTABLE = ("stream", "backfill", "train", "retrain", "reindex")
PACKAGES = ("imagetag", "producers", "streaming", "batch")
CODE_ZIP = "imagetag-code.zip"
LAUNCHER = "imagetag-submit.py"
LAUNCHER_SOURCE = '''"""spark-submit's main file: the imagetag command line (written by imagetag.cluster)."""

from imagetag.cli import main

raise SystemExit(main())
'''
# A fixed timestamp: the same code gives the same zip, byte for byte.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def build_code_zip(folder: Path) -> Path:
    """Write ``folder/imagetag-code.zip`` (the four packages, sources and package data, no
    caches) and the launcher beside it; return the zip's path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CODE_ZIP
    partial = target.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            root = _package_dir(package)
            for path in sorted(root.rglob("*")):
                if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                    continue
                name = f"{package}/{path.relative_to(root).as_posix()}"
                entry = zipfile.ZipInfo(name, _ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(entry, path.read_bytes())
    partial.replace(target)
    (folder / LAUNCHER).write_text(LAUNCHER_SOURCE)
    return target


def _package_dir(package: str) -> Path:
    module = importlib.import_module(package)
    assert module.__file__ is not None, f"{package} is a namespace package"
    return Path(module.__file__).resolve().parent


def submit_command(settings: Settings, job: list[str], code_zip: Path) -> list[str]:
    """The ``spark-submit`` argv that runs ``imagetag <job...>`` on ``spark.master``."""
    spark = settings.spark
    conf = {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        **loopback_driver_conf(settings),
        **driver_java_conf(c1_only=job[0] == "stream"),
        **spark.conf,
    }
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        spark.master,
        "--name",
        f"imagetag {job[0]}",
        "--driver-memory",
        spark.driver_memory,
        "--executor-memory",
        spark.executor_memory,
        "--py-files",
        str(code_zip),
        "--jars",
        ",".join(str(jar.resolve()) for jar in connector_jars(settings)),
    ]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(code_zip.parent / LAUNCHER), *job]


def submit_env(settings: Settings) -> dict[str, str]:
    """spark-submit's environment: this one, with pyspark's Spark home and, for a master on
    loopback, ``SPARK_LOCAL_IP`` so the driver binds nothing else."""
    env = {**os.environ, "SPARK_HOME": str(spark_home())}
    if standalone_master(settings) is not None:
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


def run_submitted(command: list[str], env: dict[str, str]) -> int:
    """Run ``spark-submit`` and wait for it, handing SIGTERM / SIGINT to its Python driver
    (see the module docstring); its exit code."""
    process = subprocess.Popen(command, env=env, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        del frame
        target = python_driver(process.pid) or process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def python_driver(jvm_pid: int) -> int | None:
    """The Python driver spark-submit's JVM started (``PythonRunner`` runs it as a child), or
    None while there is none yet."""
    for task in Path(f"/proc/{jvm_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(LAUNCHER.encode()) for part in cmdline):
                return int(child)
    return None
