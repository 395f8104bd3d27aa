"""The replay's pure parts: ``--since`` parsing, options validation, filters, skip reasons, the
summary table. No services."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import pytest

from imagetag import cli
from imagetag.avro import AvroDeserializer
from imagetag.commands.dlq import format_summary
from imagetag.records import dead_letter
from producers.replay import (
    REPLAY_HEADER,
    SKIP_EMPTY,
    SKIP_INDEX,
    ReplayOptions,
    ReplayOptionsError,
    ReplaySummary,
    failed_at_ms,
    parse_since,
    replay_header,
    skip_reason,
)

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)
HOUR_MS = 3_600_000


def _letter(stage: str = "decode", reason: str = "not_an_image", **changes: Any) -> dict[str, Any]:
    letter: dict[str, Any] = {
        "key": b"k",
        "value": b"original bytes",
        "topic": "images",
        "partition": 0,
        "offset": 7,
        "stage": stage,
        "reason": reason,
        "detail": "",
        "failed_at": NOW - dt.timedelta(hours=3),
    }
    letter.update(changes)
    return letter


# -- --since ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "back_ms"),
    [
        ("90s", 90_000),
        ("30m", 30 * 60_000),
        ("2h", 2 * HOUR_MS),
        ("1d", 24 * HOUR_MS),
        ("1w", 7 * 24 * HOUR_MS),
        ("1h30m", 90 * 60_000),
        ("1.5h", 90 * 60_000),
        (" 2h ", 2 * HOUR_MS),
    ],
)
def test_since_durations_are_back_from_now(text: str, back_ms: int) -> None:
    assert parse_since(text, now=NOW) == NOW_MS - back_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", dt.datetime(2026, 3, 1, tzinfo=dt.UTC)),
        ("2026-03-01T08:30", dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)),
        ("2026-03-01T08:30:00Z", dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)),
        ("2026-03-01T10:30:00+02:00", dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)),
        ("2026-03-01 08:30:15.250", dt.datetime(2026, 3, 1, 8, 30, 15, 250_000, tzinfo=dt.UTC)),
    ],
)
def test_since_iso_times_are_utc_unless_they_say_otherwise(
    text: str, expected: dt.datetime
) -> None:
    assert parse_since(text, now=NOW) == int(expected.timestamp() * 1000)


@pytest.mark.parametrize(
    "text", ["", "  ", "2", "h", "2x", "-2h", "2h-", "yesterday", "2026-13-01"]
)
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ReplayOptionsError, match="since"):
        parse_since(text, now=NOW)


def test_since_refuses_the_future() -> None:
    with pytest.raises(ReplayOptionsError, match="future"):
        parse_since("2026-03-11", now=NOW)


def test_since_on_the_command_line_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["dlq", "replay", "--since", "soon"])
    assert exit_info.value.code == 2
    assert "--since 'soon' is neither" in capsys.readouterr().err


def test_command_line_builds_repeatable_filters() -> None:
    args = cli.build_parser().parse_args(
        ["dlq", "replay", "--reason", "a", "--reason", "b", "--stage", "decode", "--dry-run"]
    )
    assert isinstance(args, argparse.Namespace)
    assert (args.action, args.reason, args.stage, args.since) == (
        "replay",
        ["a", "b"],
        ["decode"],
        None,
    )
    assert (args.dry_run, args.json) == (True, False)


# -- options ---------------------------------------------------------------------------------


def test_options_default_to_everything_and_deduplicate_names() -> None:
    assert ReplayOptions() == ReplayOptions((), (), None, False)
    options = ReplayOptions(reasons=["a", "b", "a"], stages=("decode",))  # type: ignore[arg-type]
    assert options.reasons == ("a", "b")
    assert options.stages == ("decode",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reasons": "not_an_image"},  # one string, not a sequence of them
        {"reasons": ("",)},
        {"stages": (" decode",)},
        {"stages": (3,)},
        {"since_ms": -1},
        {"since_ms": 1.5},
        {"since_ms": True},
        {"since_ms": "2h"},
        {"dry_run": "yes"},
    ],
)
def test_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ReplayOptionsError):
        ReplayOptions(**kwargs)


def test_options_are_frozen() -> None:
    options = ReplayOptions()
    with pytest.raises(AttributeError):
        options.dry_run = True  # type: ignore[misc]


# -- filters ---------------------------------------------------------------------------------


def test_no_filter_matches_every_letter() -> None:
    assert ReplayOptions().matches(_letter())
    assert ReplayOptions().matches(_letter("index", "solr_refused"))


def test_reason_and_stage_filters_are_any_of_and_both_must_hold() -> None:
    options = ReplayOptions(reasons=("not_an_image", "too_many_pixels"), stages=("decode",))
    assert options.matches(_letter("decode", "not_an_image"))
    assert options.matches(_letter("decode", "too_many_pixels"))
    assert not options.matches(_letter("decode", "bad_magic"))
    assert not options.matches(_letter("limits", "too_many_pixels"))


def test_since_filter_compares_failed_at_inclusively() -> None:
    letter = _letter()
    at = failed_at_ms(letter)
    assert ReplayOptions(since_ms=at).matches(letter)
    assert ReplayOptions(since_ms=at - 1).matches(letter)
    assert not ReplayOptions(since_ms=at + 1).matches(letter)
    assert ReplayOptions(since_ms=parse_since("4h", now=NOW)).matches(letter)
    assert not ReplayOptions(since_ms=parse_since("2h", now=NOW)).matches(letter)


def test_failed_at_as_the_deserializer_gives_it() -> None:
    _, value = dead_letter(b"k", b"v", ("images", 1, 2), "avro", "bad_magic", "")
    letter = AvroDeserializer("DeadLetter")(value)
    assert isinstance(letter["failed_at"], dt.datetime)
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    assert abs(failed_at_ms(letter) - now_ms) < 60_000
    assert failed_at_ms({"failed_at": 1234}) == 1234


def test_index_letters_and_empty_values_are_skipped() -> None:
    assert skip_reason(_letter()) is None
    assert skip_reason(_letter("index", "solr_refused", value=b'{"id": "x"}')) == SKIP_INDEX
    assert skip_reason(_letter("avro", "empty", value=b"")) == SKIP_EMPTY


def test_replay_header_names_the_letter() -> None:
    assert replay_header("images.dlq", 1, 42) == (REPLAY_HEADER, b"images.dlq:1:42")
    assert REPLAY_HEADER == "imagetag.replay"


# -- the summary -----------------------------------------------------------------------------


def _summary(dry_run: bool) -> ReplaySummary:
    summary = ReplaySummary(dlq_topic="images.dlq", topic="images", dry_run=dry_run, read=6)
    summary.filtered_out = 1
    decode = summary.group("decode", "not_an_image")
    decode.matched = decode.replayable = 3
    decode.sent = 0 if dry_run else 2
    decode.failed = 0 if dry_run else 1
    index = summary.group("index", "solr_refused")
    index.matched = 2
    index.skipped[SKIP_INDEX] = 2
    if not dry_run:
        summary.failures["MSG_SIZE_TOO_LARGE"] = 1
    return summary


def test_summary_totals_and_json() -> None:
    data = _summary(dry_run=False).as_dict()
    assert (data["read"], data["filtered_out"], data["matched"]) == (6, 1, 5)
    assert (data["replayable"], data["sent"], data["failed"], data["skipped"]) == (3, 2, 1, 2)
    assert data["skipped_by_why"] == {SKIP_INDEX: 2}
    assert data["failed_by_reason"] == {"MSG_SIZE_TOO_LARGE": 1}
    assert [(g["stage"], g["reason"], g["matched"]) for g in data["groups"]] == [
        ("decode", "not_an_image", 3),
        ("index", "solr_refused", 2),
    ]


def test_table_says_would_send_in_a_dry_run_and_why_letters_were_skipped() -> None:
    text = format_summary(_summary(dry_run=True))
    assert "dry run" in text
    header = next(line for line in text.splitlines() if line.startswith("stage"))
    assert "would send" in header
    row = next(line for line in text.splitlines() if line.startswith("decode"))
    assert row.split()[2:4] == ["3", "3"]
    assert "2 (index_document: 2)" in text
    assert "the image bytes are in the archive" in text


def test_table_after_a_run_shows_sent_and_failures() -> None:
    text = format_summary(_summary(dry_run=False))
    header = next(line for line in text.splitlines() if line.startswith("stage"))
    assert "would send" not in header and " sent " in header
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert total.split()[1:4] == ["5", "2", "1"]
    assert "delivery failures: MSG_SIZE_TOO_LARGE: 1" in text
