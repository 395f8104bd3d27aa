"""The error hierarchy: one root, one branch per kind of failure.

Infrastructure errors (a service that does not answer) stop a command with one clear line.
Record errors (a bad image, bad Avro) are data: they carry the original bytes and go to the
dead-letter topic instead of stopping anything.
"""

from __future__ import annotations

# The dead-letter reason of a record whose handling raised something no check foresaw (a bug,
# or an input no decoder refused but a later step choked on): that record, and only it, goes to
# the dead-letter topic with the exception's type and message; its batch goes on.
INTERNAL_ERROR = "internal_error"


class ImagetagError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(ImagetagError):
    """The settings or a job's options are invalid (unknown key, bad value, missing file)."""


def check_minimums(options: object, minimums: dict[str, int]) -> None:
    """ConfigError for the first field of ``options`` (a job's options dataclass) below its
    minimum; a field that is None is unset and passes. Options check themselves on
    construction with it, so a job never starts on an out-of-range value."""
    for name, minimum in minimums.items():
        value = getattr(options, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")


class NoModelError(ConfigError):
    """The model store has no ``CURRENT`` model yet: nothing can be tagged until one is
    trained and promoted (``imagetag train``)."""

    def __init__(self, store: str, consequence: str = "run `imagetag train` first") -> None:
        self.store = store
        super().__init__(f"no model in {store}: {consequence}")


class ServiceError(ImagetagError):
    """A service (Kafka, Solr, Spark, the local stack) cannot be reached or failed to start.

    The message names the service, its address and, for the local stack, the log file.
    """

    def __init__(self, service: str, address: str, reason: str, log: str | None = None) -> None:
        self.service = service
        self.address = address
        self.reason = reason
        self.log = log
        where = f" (log: {log})" if log else ""
        super().__init__(f"{service} at {address}: {reason}{where}")


class RecordError(ImagetagError):
    """One input record cannot be processed. Keeps the original bytes for the dead-letter topic.

    ``stage`` says where it failed (``avro``, ``decode``, ``limits``, ...), ``reason`` is a short
    machine-countable token and ``detail`` a human sentence.
    """

    def __init__(
        self, stage: str, reason: str, detail: str = "", original: bytes | None = None
    ) -> None:
        self.stage = stage
        self.reason = reason
        self.detail = detail
        self.original = original
        super().__init__(f"{stage}: {reason}" + (f" ({detail})" if detail else ""))
