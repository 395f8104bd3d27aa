"""spark-submit's inputs: the code zip runs on its own (schemas included), the command ships it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from imagetag.cluster import CODE_ZIP, LAUNCHER, build_code_zip, submit_command, submit_env
from imagetag.settings import Settings
from imagetag.spark import C1_ONLY, driver_java_conf, local_socket_conf, standalone_master
from imagetag.stack import LocalStack


def test_code_zip_is_the_packages_with_their_data_and_no_caches(tmp_path: Path) -> None:
    code = build_code_zip(tmp_path)
    assert code == tmp_path / CODE_ZIP
    names = zipfile.ZipFile(code).namelist()
    for expected in (
        "imagetag/cli.py",
        "imagetag/schemas/ImageEvent.avsc",
        "producers/producer.py",
        "streaming/job.py",
        "batch/backfill/job.py",
    ):
        assert expected in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert (tmp_path / LAUNCHER).read_text().strip().endswith("raise SystemExit(main())")
    assert build_code_zip(tmp_path).read_bytes() == code.read_bytes()  # reproducible


def test_code_zip_imports_from_itself_and_finds_its_schemas(tmp_path: Path) -> None:
    """What an executor does with --py-files: the zip first on sys.path, from anywhere."""
    code = build_code_zip(tmp_path / "dist")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import imagetag.avro as a, batch.backfill.readers as r;"
        "a.AvroSerializer('ImageEvent');"
        "print(a.__file__); print(r.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(code) + "/") for path in out), out


def test_submit_command_ships_code_and_jars(tmp_path: Path) -> None:
    jars = tmp_path / "jvm" / "spark"
    jars.mkdir(parents=True)
    (jars / "spark-sql-kafka.jar").write_bytes(b"")
    settings = Settings.load(
        spark={"master": "spark://127.0.0.1:17077", "conf": {"spark.executor.cores": "1"}},
        stack={"jvm_dir": str(tmp_path / "jvm")},
    )
    code = tmp_path / "dist" / CODE_ZIP
    command = submit_command(settings, ["backfill", "/data"], code)
    assert command[0].endswith("/bin/spark-submit")
    assert command[command.index("--master") + 1] == "spark://127.0.0.1:17077"
    assert command[command.index("--py-files") + 1] == str(code)
    assert command[command.index("--jars") + 1] == str((jars / "spark-sql-kafka.jar").resolve())
    assert f"spark.pyspark.python={sys.executable}" in command
    assert "spark.executor.cores=1" in command and "spark.driver.host=127.0.0.1" in command
    assert command[-3:] == [str(code.parent / LAUNCHER), "backfill", "/data"]
    assert submit_env(settings)["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_only_the_stream_s_driver_stops_its_jit_at_c1(tmp_path: Path) -> None:
    (tmp_path / "jvm" / "spark").mkdir(parents=True)
    (tmp_path / "jvm" / "spark" / "kafka.jar").write_bytes(b"")
    settings = Settings.load(stack={"jvm_dir": str(tmp_path / "jvm")})

    def driver_options(job: str) -> list[str]:
        command = submit_command(settings, [job], tmp_path / CODE_ZIP)
        [value] = [c for c in command if c.startswith("spark.driver.extraJavaOptions=")]
        return value.split("=", 1)[1].split()

    c1 = C1_ONLY.split()
    stream = driver_options("stream")
    assert stream[1:] == c1 and stream[0].startswith("-Dlog4j2.configurationFile=")
    assert "-XX:TieredStopAtLevel=1" in c1 and "-XX:ReservedCodeCacheSize=240m" in c1
    for job in ("backfill", "train"):
        assert not set(c1) & set(driver_options(job))
    assert driver_java_conf(c1_only=True)["spark.driver.extraJavaOptions"].split() == stream
    assert not set(c1) & set(driver_java_conf()["spark.driver.extraJavaOptions"].split())


def test_local_python_workers_use_unix_sockets_in_a_folder_of_this_user_alone() -> None:
    conf = local_socket_conf()
    folder = Path(conf["spark.python.unix.domain.socket.dir"])
    assert conf["spark.python.unix.domain.socket.enabled"] == "true"
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    # One folder per process: a second session of the same process (getOrCreate) reuses it.
    assert folder == Path(local_socket_conf()["spark.python.unix.domain.socket.dir"])
    # A socket's path is at most 107 bytes; pyspark names its files ".<uuid4>.sock" (42).
    assert len(os.fsencode(folder)) + 1 + 42 <= 107


def test_the_stack_starts_a_cluster_only_for_a_loopback_master() -> None:
    def names(master: str) -> list[str]:
        return [s.name for s in LocalStack(Settings.load(spark={"master": master})).services]

    assert names("local[2]") == ["kafka", "solr"]
    assert names("spark://127.0.0.1:7077") == ["kafka", "solr", "spark-master", "spark-worker"]
    assert names("spark://spark-master:7077") == ["kafka", "solr"]  # a real cluster's
    assert standalone_master(Settings.load(spark={"master": "spark://localhost:7"})) == (
        "localhost",
        7,
    )
