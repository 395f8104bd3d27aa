"""The pure parts of the quarantine: which failures are a batch's own, and the filters that
select a chunk of a batch by its Kafka coordinates (no Spark session)."""

from __future__ import annotations

from pyspark.errors.exceptions.base import PythonException

from imagetag.pipeline import _coords_filter, fault_summary, is_data_fault


class _JavaClass:
    def __init__(self, name: str) -> None:
        self.name = name

    def getName(self) -> str:
        return self.name


class _Frame:
    def __init__(self, name: str) -> None:
        self.name = name

    def getClassName(self) -> str:
        return self.name


class _Java:
    """Stands in for a py4j Java exception: a class name (``Class@ThrowingClass`` to say
    where it was thrown) and a cause."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def getClass(self) -> _JavaClass:
        return _JavaClass(self.names[0].partition("@")[0])

    def getStackTrace(self) -> list[_Frame]:
        return [_Frame(self.names[0].partition("@")[2] or "java.lang.Object")]

    def getCause(self) -> _Java | None:
        return _Java(*self.names[1:]) if len(self.names) > 1 else None


class _Py4JError(Exception):
    def __init__(self, *names: str) -> None:
        super().__init__("An error occurred while calling o88.collectToPython")
        self.java_exception = _Java(*names)


RUNNER = "org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1"


def test_an_executor_side_python_exception_is_a_data_fault() -> None:
    assert is_data_fault(PythonException(message="ValueError: poison"))
    assert is_data_fault(
        _Py4JError("org.apache.spark.SparkException", "org.apache.spark.api.python.PythonException")
    )


def test_a_crashed_python_worker_is_a_data_fault() -> None:
    """Its runner reports the broken pipe as an EOF or, as often, a connection reset."""
    crash = (
        "org.apache.spark.SparkException@org.apache.spark.scheduler.DAGScheduler",
        f"org.apache.spark.SparkException@{RUNNER}",
    )
    assert is_data_fault(_Py4JError(*crash, "java.io.EOFException@java.io.DataInputStream"))
    assert is_data_fault(_Py4JError(*crash, "java.net.SocketException@sun.nio.ch.NioSocketImpl"))


def test_services_and_the_driver_are_not_data_faults() -> None:
    kafka = _Py4JError(
        "org.apache.spark.SparkException", "org.apache.kafka.common.errors.TimeoutException"
    )
    assert not is_data_fault(kafka)
    assert not is_data_fault(_Py4JError("org.apache.spark.sql.AnalysisException"))
    assert not is_data_fault(ConnectionError("solr down"))
    assert not is_data_fault(_Py4JError("java.io.EOFException"))  # not under a SparkException
    # a reset connection elsewhere (a Kafka or Solr client) is a service, not a worker
    elsewhere = "org.apache.spark.SparkException@org.apache.spark.sql.kafka010.KafkaSource"
    assert not is_data_fault(_Py4JError(elsewhere, "java.net.SocketException"))


def test_a_contiguous_chunk_is_one_range_per_partition() -> None:
    chunk = [("images", 0, 5), ("images", 0, 9), ("images", 1, 2)]
    assert _coords_filter(chunk) == (
        "(topic = 'images' AND partition = 0 AND offset BETWEEN 5 AND 9)"
        " OR (topic = 'images' AND partition = 1 AND offset BETWEEN 2 AND 2)"
    )


def test_scattered_coordinates_are_matched_one_by_one_and_quoted() -> None:
    chunk = [("it's", 0, 17), ("it's", 0, 131)]
    assert _coords_filter(chunk, exact=True) == (
        "(topic = 'it\\'s' AND partition = 0 AND offset = 17)"
        " OR (topic = 'it\\'s' AND partition = 0 AND offset = 131)"
    )


def test_the_fault_summary_is_the_innermost_exception_line() -> None:
    text = "An exception was thrown\nTraceback (most recent call last):\n  File x\nValueError: bad"
    assert fault_summary(text) == "ValueError: bad"
