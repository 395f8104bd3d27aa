"""Durations as people type them: ``90s``, ``30m``, ``6h``, ``1.5d``, ``1w``, ``1h30m``, and
as Spark spells them (``1 hour``, ``10 minutes``).

One parser for every option that takes a duration (``imagetag retrain --every``, the duration
form of ``imagetag dlq replay --since``, ``spark.dedupe_window``).
"""

from __future__ import annotations

import re

from imagetag.errors import ConfigError

UNIT_SECONDS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A unit is its first letter; the long names come first so that "2 hours" is not "2 h" + "ours".
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(seconds?|minutes?|hours?|days?|weeks?|[smhdw])")
_DURATION = re.compile(rf"(?:{_PART.pattern}\s*)+")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


class DurationError(ConfigError, ValueError):
    """Not a duration, or not a positive one."""


def parse_duration(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in ``text``: one or more ``<number><unit>`` (units s, m, h, d, w, or second(s),
    minute(s), hour(s), day(s), week(s); ``1h30m``, ``1 hour``),
    surrounding blanks ignored; a bare number (``90``) is seconds only when ``bare_seconds``.

    Raises DurationError for anything else and for a zero duration.
    """
    value = text.strip()
    if bare_seconds and _SECONDS.fullmatch(value):
        seconds = float(value)
    elif _DURATION.fullmatch(value):
        seconds = sum(float(n) * UNIT_SECONDS[unit[0]] for n, unit in _PART.findall(value))
    else:
        raise DurationError(f"not a duration (like 30m, 6h, 1d): {text!r}")
    if seconds <= 0:
        raise DurationError(f"a duration must be longer than zero: {text!r}")
    return seconds
