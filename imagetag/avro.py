"""The Avro wire contract: schemas from ``schemas/``, single-object encoding with fastavro.

Every message value is Avro *single-object encoding* (Avro spec, "Single-object encoding")::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form
          | Avro binary body

so any Avro library can decode it, and a reader knows which writer schema to resolve from.
Serde are objects with one call, like confluent-kafka's ``Serializer.__call__(obj, ctx)``::

    serialize = AvroSerializer("ImageEvent")
    value = serialize({"id": ..., "image": ..., ...})
    event = AvroDeserializer("ImageEvent")(value)

Where the schemas are found (:func:`schemas_dir`): an explicit ``directory`` argument if given;
otherwise inside the ``imagetag`` package (``imagetag/schemas/``, package data, read through
``importlib.resources``: so it is there in a source checkout, an editable or a regular install,
and in the zip that ``spark-submit --py-files`` ships to executors), then ``./schemas`` in the
working directory. ``schemas/`` at the repository root links to the package's folder: it is
where the wire contract is documented for producers in other languages. (No ``IMAGETAG_*``
environment variable for it: every one of those is a setting.)

Older writer schemas live in ``schemas/history/`` (see its README); the deserializer indexes
them and the current ones by fingerprint. Serializers and deserializers hold only parsed
schemas (plain dicts), so they pickle: Spark can ship them to executors.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from imagetag.errors import ConfigError, RecordError

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_NAMES = ("ImageEvent", "TagResult", "DeadLetter")

Schema = dict[str, Any]


def schemas_dir(explicit: str | Path | None = None) -> Traversable:
    """The folder holding the ``*.avsc`` files (see the module docstring for the search order):
    a path, or a folder inside a zip when the package is imported from one.

    Raises ConfigError naming the places looked at when none holds ``ImageEvent.avsc``.
    """
    candidates: list[Traversable] = (
        [Path(explicit)] if explicit is not None else [_packaged(), Path.cwd() / "schemas"]
    )
    for candidate in candidates:
        if candidate.joinpath("ImageEvent.avsc").is_file():
            return candidate
    raise ConfigError(
        "Avro schemas not found in "
        + ", ".join(str(c) for c in candidates)
        + " (the imagetag package carries them in imagetag/schemas; or pass a directory)"
    )


@lru_cache(maxsize=1)
def _packaged() -> Traversable:
    return files("imagetag").joinpath("schemas")


def load_schema(name: str, directory: str | Path | None = None) -> Schema:
    """The JSON of ``schemas/<name>.avsc`` (``name`` like ``"ImageEvent"``), not yet parsed.

    Raises ConfigError when the file is missing or not valid JSON.
    """
    return _load_json(schemas_dir(directory).joinpath(f"{name}.avsc"))


def _load_json(path: Traversable) -> Schema:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"Avro schema {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Avro schema {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Avro schema {path} must be a JSON object (a record)")
    return data


def parse(schema: Schema) -> Schema:
    """fastavro's parsed form of a schema (a new dict; fastavro's parse may add keys)."""
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)))
    if not isinstance(parsed, dict):
        raise ConfigError(f"Avro schema {schema.get('name')!r} is not a record schema")
    return parsed


def canonical_form(schema: Schema) -> str:
    """The Avro Parsing Canonical Form of ``schema`` (the fingerprint's input)."""
    return str(to_parsing_canonical_form(parse(schema)))


def fingerprint(schema: Schema) -> bytes:
    """CRC-64-AVRO (Rabin) fingerprint of the canonical form, 8 bytes little-endian.

    These are exactly the 8 bytes after ``C3 01`` in single-object encoding.
    """
    return bytes.fromhex(_fastavro_fingerprint(canonical_form(schema), "CRC-64-AVRO"))


def fingerprint_hex(schema: Schema) -> str:
    """:func:`fingerprint` as 16 hex digits (the Kafka header value and history file suffix)."""
    return fingerprint(schema).hex()


def fingerprint_of(message: bytes) -> bytes | None:
    """The writer-schema fingerprint in a single-object-encoded message, or None if not one."""
    if len(message) < HEADER_SIZE or message[:2] != MAGIC:
        return None
    return bytes(message[2:HEADER_SIZE])


def _full_name(schema: Schema) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _avsc_files(directory: Traversable) -> list[Traversable]:
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.name.endswith(".avsc")), key=lambda p: p.name
    )


KnownSchemas = tuple[tuple[bytes, str, Schema], ...]
_KNOWN: dict[str, KnownSchemas] = {}


def _known_schemas_cached(directory: Traversable) -> KnownSchemas:
    """Every schema of a folder, read once per process (keyed by the folder's name: a folder
    inside a zip is a new object on every lookup)."""
    key = str(directory)
    if key not in _KNOWN:
        _KNOWN[key] = _read_known_schemas(directory)
    return _KNOWN[key]


def _read_known_schemas(directory: Traversable) -> KnownSchemas:
    found: list[tuple[bytes, str, Schema]] = []
    for path in _avsc_files(directory) + _avsc_files(directory.joinpath("history")):
        schema = _load_json(path)
        found.append((fingerprint(schema), _full_name(schema), schema))
    return tuple(found)


def known_schemas(directory: str | Path | None = None) -> dict[bytes, Schema]:
    """Every schema in ``schemas/`` and ``schemas/history/``, by fingerprint (unparsed JSON)."""
    return {fp: schema for fp, _, schema in _known_schemas_cached(schemas_dir(directory))}


class AvroSerializer:
    """Turns a mapping into a single-object-encoded Avro message of one schema.

    ``AvroSerializer("ImageEvent")`` loads ``schemas/ImageEvent.avsc`` (from ``directory`` when
    given); a schema dict may be given instead of a name. Calling it with a mapping returns the message bytes; fields with
    a default may be omitted, unknown fields are refused. ``timestamp-millis`` fields take a
    ``datetime`` (or epoch milliseconds). Raises RecordError(stage="avro",
    reason="schema_mismatch") when the mapping does not fit the schema.
    """

    def __init__(self, schema: str | Schema, directory: str | Path | None = None) -> None:
        raw = load_schema(schema, directory) if isinstance(schema, str) else schema
        self.schema: Schema = parse(raw)
        self.name = _full_name(raw)
        self.fingerprint = fingerprint(raw)
        self._header = MAGIC + self.fingerprint

    def __call__(self, obj: Mapping[str, Any], ctx: object = None) -> bytes:
        out = io.BytesIO()
        out.write(self._header)
        try:
            fastavro.schemaless_writer(out, self.schema, obj, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise RecordError("avro", "schema_mismatch", f"{self.name}: {exc}") from exc
        return out.getvalue()

    def __repr__(self) -> str:
        return f"AvroSerializer({self.name}, fingerprint={self.fingerprint.hex()})"


class AvroDeserializer:
    """Decodes single-object-encoded Avro messages into dicts of the reader schema.

    The reader schema is ``schemas/<schema>.avsc`` (or a given dict). Writer schemas are looked
    up by the message's fingerprint among ``schemas/*.avsc``, ``schemas/history/*.avsc`` and
    ``writer_schemas``; a message written with an older (or newer) compatible schema is
    resolved into the reader schema. Raises RecordError(stage="avro", original=message) with
    reason ``bad_magic`` (not single-object encoding), ``unknown_schema`` (fingerprint not
    known), ``incompatible_schema`` (writer cannot be resolved to reader) or ``malformed``
    (truncated / corrupt body).
    """

    def __init__(
        self,
        schema: str | Schema,
        directory: str | Path | None = None,
        writer_schemas: Iterable[Schema] = (),
    ) -> None:
        raw = load_schema(schema, directory) if isinstance(schema, str) else schema
        self.name = _full_name(raw)
        self.reader_schema: Schema = parse(raw)
        self.fingerprint = fingerprint(raw)
        self._writers: dict[bytes, Schema] = {self.fingerprint: self.reader_schema}
        try:
            found: Traversable | None = schemas_dir(directory)
        except ConfigError:
            if isinstance(schema, str):
                raise
            found = None  # a dict schema and no schemas/ folder: only the given schemas
        # Other records' schemas are remembered by name only, to say what a stray message is.
        self._others: dict[bytes, str] = {}
        aliases = {self.name, *(str(a) for a in raw.get("aliases", []))}
        if found is not None:
            for fp, full_name, known in _known_schemas_cached(found):
                if full_name in aliases:
                    self._writers.setdefault(fp, parse(known))
                else:
                    self._others[fp] = full_name
        for extra in writer_schemas:
            self.register(extra)

    def register(self, writer_schema: Schema) -> bytes:
        """Add a writer schema this reader may meet; returns its fingerprint."""
        fp = fingerprint(writer_schema)
        self._writers[fp] = parse(writer_schema)
        return fp

    @property
    def writer_fingerprints(self) -> frozenset[bytes]:
        return frozenset(self._writers)

    def __call__(self, message: bytes, ctx: object = None) -> dict[str, Any]:
        message = bytes(message)
        fp = fingerprint_of(message)
        if fp is None:
            raise RecordError(
                "avro", "bad_magic", "not Avro single-object encoding (no C3 01 header)", message
            )
        writer = self._writers.get(fp)
        if writer is None:
            other = self._others.get(fp)
            detail = (
                f"a {other} message, not {self.name}"
                if other
                else f"writer schema fingerprint {fp.hex()} is not known"
            )
            raise RecordError("avro", "unknown_schema", detail, message)
        body = io.BytesIO(message)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, writer, self.reader_schema)
        except fastavro.read.SchemaResolutionError as exc:
            detail = f"writer {writer.get('name')} {fp.hex()} -> {self.name}: {str(exc)[:200]}"
            raise RecordError("avro", "incompatible_schema", detail, message) from exc
        except (
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            UnicodeDecodeError,
            OverflowError,
        ) as exc:
            raise RecordError("avro", "malformed", f"{self.name}: {exc!r}", message) from exc
        if body.tell() != len(message):
            raise RecordError(
                "avro", "malformed", f"{len(message) - body.tell()} bytes after the record", message
            )
        if not isinstance(record, dict):
            raise RecordError(
                "avro", "malformed", f"expected a record, got {type(record).__name__}", message
            )
        return record

    def __repr__(self) -> str:
        return f"AvroDeserializer({self.name}, {len(self._writers)} writer schemas)"
