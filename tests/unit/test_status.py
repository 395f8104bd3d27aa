"""`imagetag status` without services: reading a real /metrics page, the stream's figures, the
screen and the JSON of a gathered Status, and the exit code rule."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import requests
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import generate_latest

from imagetag import cli
from imagetag.commands.status import MAX_REASONS, format_status
from imagetag.errors import ConfigError
from imagetag.metrics import BackfillMetrics, StreamMetrics
from imagetag.records import dead_letter
from imagetag.settings import Settings
from imagetag.status import (
    GroupLag,
    MetricsSample,
    ModelState,
    ServiceState,
    SolrDocuments,
    Status,
    StatusOptions,
    StreamState,
    TopicCount,
    dead_letter_cause,
    format_duration,
    kafka_reason,
    read_stream_metrics,
    request_reason,
    spark_master_state,
    stream_endpoint,
    stream_state,
)

ENDPOINT = "http://127.0.0.1:9108/metrics"
MANIFEST = {
    "version": "v0002",
    "created": "2026-01-31T12:00:00+00:00",
    "featurizer": {"name": "dense-sift"},
    "k": 256,
    "trees": 100,
    "depth": 20,
    "data": {"source": "fashion-mnist"},
    "metrics": {"accuracy": 0.8617, "coverage": 0.9399, "confusion": {"matrix": [[1]]}},
}


def stream_page(
    tagged: int = 90, review: int = 8, dead: int = 2, batches: int = 3, version: str = "v0002"
) -> str:
    """A /metrics page as the stream serves it: a real StreamMetrics registry, exposed."""
    metrics = StreamMetrics()
    for outcome, n in {"tagged": tagged, "review": review, "dead": dead}.items():
        metrics.records.labels(outcome).inc(n)
    metrics.batches.inc(batches)
    metrics.last_batch.set(time.time() - 4)
    metrics.model_in_use(version)
    metrics.input_lag({"0": 5, "1": 7})
    return generate_latest(metrics.registry).decode()


def sample(at: float, images: int, started: float = 1000.0) -> MetricsSample:
    return MetricsSample(
        scraped_at=at,
        records={"tagged": images, "review": 0, "dead": 0},
        batches=1,
        started_at=started,
        last_batch_at=at - 3,
        lag={0: 1},
        model_version="v0002",
    )


def status(**changes: object) -> Status:
    """A gathered Status: everything up but the stream, dead letters of three causes."""
    base = Status(
        taken_at=1_800_000_000.0,
        kafka=ServiceState("kafka", True, "127.0.0.1:9092", "4.4.0", "1 broker, cluster AbC123"),
        solr=ServiceState("solr", True, "http://127.0.0.1:8983/solr", "9.10.1", "solrcloud"),
        spark=ServiceState("spark", True, "local[2]", "4.2.0", "in-process: each job runs its own"),
        stream=StreamState(
            ENDPOINT,
            False,
            "not reachable (Connection refused)",
            group=GroupLag("imagetag-stream", {0: (10, 12), 1: (None, 4)}),
        ),
        documents=SolrDocuments(
            "images", 1250, {"v0001": 1000, "v0002": 200, "": 50}, ["images_1"]
        ),
        review=TopicCount("images.review", 120, False, 150, seconds=5.0),
        dead_letters=TopicCount(
            "images.dlq",
            6,
            True,
            8,
            {("decode", "not_an_image"): 3, ("limits", "too_many_pixels"): 2, ("avro", "empty"): 1},
        ),
        model=ModelState("models", "v0002", MANIFEST),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def alive_stream() -> StreamState:
    first = read_stream_metrics(stream_page(tagged=90), time.time() - 2)
    second = read_stream_metrics(stream_page(tagged=110), time.time())
    assert first is not None and second is not None
    return replace(stream_state(ENDPOINT, first, second), group=GroupLag("imagetag-stream"))


# -- the stream's /metrics ---------------------------------------------------------------------


def test_a_real_stream_page_is_read() -> None:
    now = time.time()
    found = read_stream_metrics(stream_page(), now)
    assert found is not None
    assert found.records == {"tagged": 90, "review": 8, "dead": 2}
    assert (found.batches, found.images, found.model_version) == (3, 100, "v0002")
    assert found.lag == {0: 5, 1: 7}
    assert found.last_batch_at == pytest.approx(now - 4, abs=1)
    assert found.started_at == pytest.approx(now, abs=5)  # the registry's creation


def test_a_page_without_the_streams_metrics_is_not_the_stream() -> None:
    page = generate_latest(BackfillMetrics().registry).decode()
    assert read_stream_metrics(page, time.time()) is None


def test_a_stream_without_a_batch_has_no_last_batch_age() -> None:
    found = read_stream_metrics(generate_latest(StreamMetrics().registry).decode(), time.time())
    assert found is not None and found.last_batch_at is None
    assert stream_state(ENDPOINT, found, None).last_batch_age_s is None


def test_the_rate_is_the_images_between_two_scrapes_over_their_interval() -> None:
    state = stream_state(ENDPOINT, sample(2000.0, 100), replace(sample(2002.0, 150), batches=2))
    assert (state.rate_per_s, state.rate_window_s, state.rate_window_batches) == (25.0, 2.0, 1)
    assert state.average_per_s == pytest.approx(150 / 1002)
    assert state.last_batch_age_s == 3.0
    assert state.alive and state.lag == {0: 1}


def test_a_restart_between_the_scrapes_counts_from_zero() -> None:
    state = stream_state(ENDPOINT, sample(2000.0, 100), sample(2002.0, 10, started=2001.0))
    assert (state.rate_per_s, state.rate_window_batches) == (5.0, 1)


def test_a_window_in_which_no_batch_ended_says_so() -> None:
    state = stream_state(ENDPOINT, sample(2000.0, 100), sample(2002.0, 100))
    assert (state.rate_per_s, state.rate_window_batches) == (0.0, 0)
    text = format_status(status(stream=replace(state, group=GroupLag("g"))))
    assert "0.0 images/s over 2.0s (no batch ended in it)" in text


def test_one_scrape_gives_no_rate() -> None:
    state = stream_state(ENDPOINT, sample(2000.0, 100), None, "second scrape failed: HTTP 500")
    assert state.alive and state.rate_per_s is None and state.reason.startswith("second")


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 9108, "http://127.0.0.1:9108/metrics"),
        ("0.0.0.0", 9108, "http://127.0.0.1:9108/metrics"),
        ("::1", 9108, "http://[::1]:9108/metrics"),
        ("127.0.0.1", None, None),  # the endpoint is off
        ("127.0.0.1", 0, None),  # a free port chosen at start: not findable
    ],
)
def test_the_stream_endpoint(host: str, port: int | None, expected: str | None) -> None:
    settings = Settings.load(metrics={"host": host, "stream_port": port})
    assert stream_endpoint(settings) == expected


# -- the pieces of the other sections ----------------------------------------------------------


def test_group_lag_counts_only_partitions_with_a_commit() -> None:
    group = GroupLag("g", {0: (10, 12), 1: (None, 4), 2: (7, 7)})
    assert group.behind() == {0: 2, 1: None, 2: 0}
    assert group.total() == 2
    assert GroupLag("g", {0: (None, 4)}).total() is None
    assert group.as_dict()["partitions"]["1"] == {"committed": None, "end": 4, "lag": None}


def test_dead_letters_are_counted_by_stage_and_reason() -> None:
    cause = dead_letter_cause()
    _, letter = dead_letter(b"k", b"v", ("images", 0, 1), "decode", "not_an_image", "no")
    assert cause(letter) == ("decode", "not_an_image")
    assert cause(b"junk") == ("?", "not_a_dead_letter")
    assert cause(None) == ("?", "not_a_dead_letter")


def test_kafka_failures_are_one_line() -> None:
    settings = Settings.load()
    down = KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"))
    assert kafka_reason(settings, "read metadata", down).startswith("not reachable (")
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert kafka_reason(settings, "read t", denied) == (
        "user 'anonymous' may not read t (TOPIC_AUTHORIZATION_FAILED)"
    )


def test_http_failures_are_one_line() -> None:
    refused = requests.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /solr "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: "
        "Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    assert request_reason(refused, 3) == "not reachable (Connection refused)"
    assert request_reason(requests.ReadTimeout("slow"), 2.5) == "no answer in 2.5s"


def test_a_standalone_masters_json() -> None:
    body = {
        "status": "ALIVE",
        "cores": 2,
        "coresused": 2,
        "workers": [{"state": "ALIVE"}, {"state": "DEAD"}],
        "activeapps": [{"id": "app-1", "name": "imagetag-stream"}],
    }
    state = spark_master_state("spark://127.0.0.1:7077", "4.2.0", body)
    assert state.up is True
    assert state.detail == "1 worker, 2/2 cores used, running: imagetag-stream"
    standby = spark_master_state("spark://m:7077", None, {"status": "STANDBY"})
    assert standby.up is False and standby.detail.startswith("master STANDBY; 0 workers")


def test_the_model_shows_its_scalar_metrics() -> None:
    model = ModelState("models", "v0002", MANIFEST)
    assert model.metrics() == {"accuracy": 0.8617, "coverage": 0.9399}
    assert ModelState("models", error="no CURRENT model").as_dict()["current"] is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(4.25, "4.2s"), (42, "42s"), (303, "5m03s"), (11100, "3h05m"), (183600, "2d03h")],
)
def test_durations_at_a_glance(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_options_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="scan_seconds"):
        StatusOptions(scan_seconds=0)
    with pytest.raises(ConfigError, match="timeout_s"):
        StatusOptions(timeout_s=float("nan"))


# -- the exit code ---------------------------------------------------------------------------


def test_the_exit_code_is_0_only_when_kafka_solr_and_the_stream_are_up() -> None:
    assert status().exit_code == 1  # the stream is down
    up = status(stream=alive_stream())
    assert (up.ok, up.exit_code) == (True, 0)
    # Spark and the model do not count.
    spark_down = ServiceState("spark", False, "spark://127.0.0.1:7077", None, "web UI: down")
    assert status(stream=alive_stream(), spark=spark_down, model=ModelState("m", error="x")).ok
    kafka_down = ServiceState("kafka", False, "127.0.0.1:9092", None, "not reachable")
    assert status(stream=alive_stream(), kafka=kafka_down).exit_code == 1
    solr_down = ServiceState("solr", False, "http://127.0.0.1:8983/solr", None, "HTTP 401")
    assert status(stream=alive_stream(), solr=solr_down).exit_code == 1


# -- the screen ------------------------------------------------------------------------------


def test_the_screen_with_a_stream_that_is_down() -> None:
    text = format_status(status())
    print("\n" + text)
    lines = text.splitlines()
    assert lines[0] == "NOT OK: stream down"
    table = lines[2:7]
    assert table[0].split() == ["SERVICE", "STATE", "VERSION", "ADDRESS", "DETAIL"]
    column = table[0].index("ADDRESS")  # the columns are aligned
    assert all(row[column - 2 : column] == "  " and row[column] != " " for row in table)
    assert table[4].split()[:4] == ["stream", "down", "-", ENDPOINT]
    assert table[4].endswith("not reachable (Connection refused)")
    assert "stream         down: not reachable (Connection refused)" in lines
    assert "  lag (group)  2: p0 2, p1 - [group imagetag-stream]" in lines
    docs = lines.index("solr docs      1,250 in images -> images_1")
    assert lines[docs + 1 : docs + 4] == [
        "                  50  (no version)",
        "               1,000  v0001",
        "                 200  v0002",
    ]
    assert (
        "review         at least 120 in images.review (read stopped after 5.0s; offsets span 150)"
    ) in lines
    dead = lines.index("dead letters   6 in images.dlq")
    assert lines[dead + 1 : dead + 4] == [
        "               3  decode/not_an_image",
        "               2  limits/too_many_pixels",
        "               1  avro/empty",
    ]
    model = lines.index("model          v0002 (CURRENT)")
    assert "accuracy=0.8617" in lines[model + 1] and lines[model + 1].startswith(" " * 15 + "2026")


def test_the_screen_with_a_stream_that_is_alive() -> None:
    text = format_status(status(stream=alive_stream()))
    print("\n" + text)
    lines = text.splitlines()
    assert lines[0] == "ok: Kafka, Solr and the stream are up"
    stream = next(line for line in lines if line.startswith("stream" + " " * 9))
    assert stream.split()[:2] == ["stream", "alive,"] and "3 batches" in stream
    assert any(line.startswith("  last batch") and line.endswith("s ago") for line in lines)
    rate = next(line for line in lines if line.startswith("  rate"))
    assert "images/s over" in rate and "since start" in rate
    assert "  images       110 tagged  8 review  2 dead" in lines
    assert "  lag (stream) 12: p0 5, p1 7" in lines


def test_the_screen_with_everything_down_has_no_traceback_and_one_reason_each() -> None:
    why = "not reachable (Connection refused)"
    down = status(
        kafka=ServiceState("kafka", False, "127.0.0.1:1", None, why),
        solr=ServiceState("solr", False, "http://127.0.0.1:2/solr", None, why),
        spark=ServiceState("spark", None, "yarn", None, "not probed (not a standalone master)"),
        stream=StreamState("-", False, "no metrics endpoint (metrics.stream_port is null)"),
        documents=SolrDocuments("images", error=why),
        review=TopicCount("images.review", error="not read: Kafka is down"),
        dead_letters=TopicCount("images.dlq", error="not read: Kafka is down"),
        model=ModelState("models", error="no CURRENT model (run `imagetag train`)"),
    )
    text = format_status(down)
    print("\n" + text)
    assert text.splitlines()[0] == "NOT OK: kafka, solr, stream down"
    assert "spark    unknown  -        yarn" in text
    assert "review         not read: Kafka is down" in text
    assert "model          no CURRENT model (run `imagetag train`)" in text
    assert "lag (group)  not read" in text
    assert down.as_dict()["stream"]["lag"]["group"] is None


def test_many_dead_letter_reasons_keep_to_one_screen() -> None:
    reasons = {("decode", f"reason_{i:02d}"): 100 - i for i in range(MAX_REASONS + 4)}
    many = status(dead_letters=TopicCount("images.dlq", sum(reasons.values()), True, 0, reasons))
    lines = format_status(many).splitlines()
    assert sum(line.endswith(tuple(f"decode/{r}" for _, r in reasons)) for line in lines) == (
        MAX_REASONS
    )
    rest = sum(100 - i for i in range(MAX_REASONS, MAX_REASONS + 4))
    assert lines[-3].split() == [str(rest), "(4", "more", "reasons)"]


# -- the JSON --------------------------------------------------------------------------------


def test_the_json_document() -> None:
    data = json.loads(json.dumps(status().as_dict(), sort_keys=True))
    assert set(data) == {
        "ok",
        "exit_code",
        "taken_at",
        "services",
        "stream",
        "solr",
        "review",
        "dead_letters",
        "model",
    }
    assert (data["ok"], data["exit_code"], data["taken_at"]) == (
        False,
        1,
        "2027-01-15T08:00:00+00:00",
    )
    assert set(data["services"]) == {"kafka", "solr", "spark", "stream"}
    assert data["services"]["kafka"] == {
        "up": True,
        "address": "127.0.0.1:9092",
        "version": "4.4.0",
        "detail": "1 broker, cluster AbC123",
    }
    assert data["services"]["stream"]["up"] is False
    stream = data["stream"]
    assert (stream["alive"], stream["reason"]) == (False, "not reachable (Connection refused)")
    assert stream["rate_per_s"] is None and stream["last_batch_age_s"] is None
    assert stream["lag"]["group"]["total"] == 2
    assert stream["lag"]["group"]["partitions"]["0"] == {"committed": 10, "end": 12, "lag": 2}
    assert stream["lag"]["stream"] == {"partitions": {}, "total": None}
    assert data["solr"]["by_model_version"] == {"": 50, "v0001": 1000, "v0002": 200}
    assert data["review"] == {
        "topic": "images.review",
        "records": 120,
        "complete": False,
        "offsets": 150,
        "seconds": 5.0,
        "error": None,
    }
    assert data["dead_letters"]["by_reason"][0] == {
        "stage": "decode",
        "reason": "not_an_image",
        "count": 3,
    }
    assert data["model"]["metrics"] == {"accuracy": 0.8617, "coverage": 0.9399}


def test_the_json_of_an_alive_stream() -> None:
    data = status(stream=alive_stream()).as_dict()
    stream = data["stream"]
    assert (data["ok"], stream["alive"], stream["batches"], stream["model_version"]) == (
        True,
        True,
        3,
        "v0002",
    )
    assert stream["records"] == {"tagged": 110, "review": 8, "dead": 2}
    assert stream["rate_per_s"] > 0 and stream["rate_window_s"] > 0
    assert stream["lag"]["stream"] == {"partitions": {"0": 5, "1": 7}, "total": 12}
    assert stream["last_batch_age_s"] == pytest.approx(4, abs=1)


def test_the_command_line_takes_the_options() -> None:
    args = cli.build_parser(["status"]).parse_args(
        ["status", "--json", "--timeout", "2", "--window", "1", "--scan-seconds", "3"]
    )
    assert (args.json, args.timeout, args.window, args.scan_seconds) == (True, 2.0, 1.0, 3.0)
    assert args.scan_records == StatusOptions().scan_records
