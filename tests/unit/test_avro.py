"""The Avro contract: single-object encoding, a second implementation, schema evolution."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest

from imagetag.avro import (
    HEADER_SIZE,
    MAGIC,
    SCHEMA_NAMES,
    AvroDeserializer,
    AvroSerializer,
    canonical_form,
    fingerprint,
    fingerprint_hex,
    fingerprint_of,
    known_schemas,
    load_schema,
    schemas_dir,
)
from imagetag.errors import ConfigError, RecordError

NOW = datetime(2025, 11, 22, 10, 30, 15, 123000, tzinfo=UTC)
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

SAMPLES: dict[str, dict[str, Any]] = {
    "ImageEvent": {
        "id": hashlib.sha256(IMAGE).hexdigest(),
        "image": IMAGE,
        "content_type": "image/png",
        "source": "file:///data/cats/a%20b.png",
        "produced_at": NOW,
        "label": "cat",
        "metadata": {"camera": "x100", "ü": "ünïcödé"},
    },
    "TagResult": {
        "id": "ab" * 32,
        "source": "cifar10:///data/data_batch_1#17",
        "tags": ["cat", "dog"],
        "top_tag": "cat",
        "confidence": 0.5,
        "votes": {"cat": 0.5, "dog": 0.40000000596046448, "bird": 0.1},
        "threshold": 0.4,
        "model_version": "v3",
        "width": 32,
        "height": 32,
        "format": "png",
        "content_type": "image/png",
        "size": 2345,
        "phash": "f0e1d2c3b4a59687",
        "label": None,
        "metadata": {},
        "produced_at": NOW,
        "ingested_at": NOW,
        "tagged_at": NOW,
    },
    "DeadLetter": {
        "key": b"\x00\xffkey",
        "value": b"\xc3\x01garbage",
        "topic": "images",
        "partition": 1,
        "offset": 123456789012,
        "stage": "avro",
        "reason": "unknown_schema",
        "detail": "writer schema fingerprint 0011223344556677 is not known",
        "failed_at": NOW,
    },
}


def _avro_schema(name: str) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(load_schema(name)))


# -- round trip and framing ----------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_round_trip(name: str) -> None:
    message = AvroSerializer(name)(SAMPLES[name])
    assert message[:2] == MAGIC == b"\xc3\x01"
    assert message[2:HEADER_SIZE] == fingerprint(load_schema(name))
    decoded = AvroDeserializer(name)(message)
    expected = dict(SAMPLES[name])
    if name == "TagResult":  # floats are 32-bit on the wire
        assert decoded.pop("votes") == pytest.approx(expected.pop("votes"))
        assert decoded.pop("threshold") == pytest.approx(expected.pop("threshold"))
    assert decoded == expected


def test_defaults_may_be_omitted() -> None:
    event = {k: v for k, v in SAMPLES["ImageEvent"].items() if k not in ("label", "metadata")}
    decoded = AvroDeserializer("ImageEvent")(AvroSerializer("ImageEvent")(event))
    assert decoded["label"] is None
    assert decoded["metadata"] == {}


def test_fingerprint_is_crc64_avro_little_endian() -> None:
    # Test vector from the Avro spec's schema-tests: fingerprint64("null") = 7195948357588979594.
    assert fingerprint({"type": "null"}) == (7195948357588979594).to_bytes(8, "little")
    # Canonical form strips docs/defaults, so documentation edits keep the fingerprint.
    schema = load_schema("ImageEvent")
    edited = copy.deepcopy(schema)
    edited["doc"] = "reworded"
    assert fingerprint(edited) == fingerprint(schema)
    assert canonical_form(schema).startswith('{"name":"imagetag.v1.ImageEvent","type":"record"')
    assert fingerprint_hex(schema) == fingerprint(schema).hex()


# -- a second, independent implementation ----------------------------------------------


# CRC-64-AVRO fingerprints of the current schemas, as Java Avro 1.12.0 computes them
# (SchemaNormalization.parsingFingerprint64, little-endian; checked with Spark's avro jar).
# If this test fails you changed a schema: copy the released .avsc to schemas/history/ first.
RELEASED_FINGERPRINTS = {
    "ImageEvent": "c8b1cac0467e252f",
    "TagResult": "673d155492757242",
    "DeadLetter": "fb9e4854673ce26b",
}


def _rabin64(data: bytes) -> int:
    """The Avro spec's reference CRC-64-AVRO, written out independently of both libraries."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def _spec_canonical_form(name: str) -> str:
    # The avro package keeps logical-typed primitives as {"type":"long"}; the spec's
    # [PRIMITIVES] rule (and Java, and fastavro) reduce them to "long". Same bug: goavro#174.
    return str(_avro_schema(name).canonical_form).replace('{"type":"long"}', '"long"')


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_fingerprints_match_java_and_the_spec(name: str) -> None:
    schema = load_schema(name)
    assert canonical_form(schema) == _spec_canonical_form(name)
    assert fingerprint(schema) == _rabin64(_spec_canonical_form(name).encode()).to_bytes(
        8, "little"
    )
    assert fingerprint_hex(schema) == RELEASED_FINGERPRINTS[name]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_avro_package_decodes_our_messages(name: str) -> None:
    message = AvroSerializer(name)(SAMPLES[name])
    schema = _avro_schema(name)
    assert message[:2] == b"\xc3\x01"
    assert message[2:10] == _rabin64(_spec_canonical_form(name).encode()).to_bytes(8, "little")
    body = io.BytesIO(message[10:])
    decoded: Any = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(body))
    assert body.tell() == len(message) - 10
    expected = dict(SAMPLES[name])
    if name == "TagResult":
        assert decoded.pop("votes") == pytest.approx(expected.pop("votes"))
        assert decoded.pop("threshold") == pytest.approx(expected.pop("threshold"))
    assert decoded == expected


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_we_decode_avro_package_messages(name: str) -> None:
    schema = _avro_schema(name)
    out = io.BytesIO()
    out.write(b"\xc3\x01" + _rabin64(_spec_canonical_form(name).encode()).to_bytes(8, "little"))
    avro.io.DatumWriter(schema).write(SAMPLES[name], avro.io.BinaryEncoder(out))
    decoded = AvroDeserializer(name)(out.getvalue())
    expected = dict(SAMPLES[name])
    if name == "TagResult":
        assert decoded.pop("votes") == pytest.approx(expected.pop("votes"))
        assert decoded.pop("threshold") == pytest.approx(expected.pop("threshold"))
    assert decoded == expected


# -- schema evolution --------------------------------------------------------------------


def _image_event_v2() -> dict[str, Any]:
    v2 = copy.deepcopy(load_schema("ImageEvent"))
    v2["fields"].append(
        {"name": "license", "type": ["null", "string"], "default": None, "doc": "added in v2"}
    )
    return v2


def test_evolution_new_reader_reads_old_writer() -> None:
    """A field added with a default: a v2 reader fills it in for v1 messages."""
    old_message = AvroSerializer("ImageEvent")(SAMPLES["ImageEvent"])
    reader = AvroDeserializer(_image_event_v2())  # v1 is in schemas/: already a known writer
    decoded = reader(old_message)
    assert decoded["license"] is None
    assert decoded["id"] == SAMPLES["ImageEvent"]["id"]
    # and the avro package resolves it the same way
    body = io.BytesIO(old_message[10:])
    datum = avro.io.DatumReader(
        _avro_schema("ImageEvent"), avro.schema.parse(json.dumps(_image_event_v2()))
    )
    resolved: Any = datum.read(avro.io.BinaryDecoder(body))
    assert resolved["license"] is None


def test_evolution_old_reader_reads_new_writer() -> None:
    """A v1 reader skips the field a v2 writer added, once it knows the v2 writer schema."""
    v2 = _image_event_v2()
    new_message = AvroSerializer(v2)({**SAMPLES["ImageEvent"], "license": "CC-BY-4.0"})
    assert fingerprint_of(new_message) == fingerprint(v2) != fingerprint(load_schema("ImageEvent"))
    with pytest.raises(RecordError) as unknown:
        AvroDeserializer("ImageEvent")(new_message)
    assert unknown.value.reason == "unknown_schema"
    decoded = AvroDeserializer("ImageEvent", writer_schemas=[v2])(new_message)
    assert "license" not in decoded
    assert decoded == SAMPLES["ImageEvent"]


def test_history_folder_provides_older_writers(tmp_path: Path) -> None:
    """Schemas kept in schemas/history/ are known writers without registering anything."""
    shutil.copytree(str(schemas_dir()), tmp_path / "schemas")
    v2 = _image_event_v2()
    # pretend v2 is current: v1 moves to history, v2 replaces ImageEvent.avsc
    v1_fp = fingerprint_hex(load_schema("ImageEvent"))
    shutil.copy(
        tmp_path / "schemas/ImageEvent.avsc", tmp_path / f"schemas/history/ImageEvent.{v1_fp}.avsc"
    )
    (tmp_path / "schemas/ImageEvent.avsc").write_text(json.dumps(v2))

    old_message = AvroSerializer("ImageEvent")(SAMPLES["ImageEvent"])  # repo's v1
    reader = AvroDeserializer("ImageEvent", directory=tmp_path / "schemas")
    assert reader(old_message)["license"] is None
    assert bytes.fromhex(v1_fp) in known_schemas(tmp_path / "schemas")


def test_every_history_schema_parses() -> None:
    for fp, schema in known_schemas().items():
        assert fingerprint(schema) == fp
        avro.schema.parse(json.dumps(schema))


# -- errors ------------------------------------------------------------------------------


def test_bad_magic() -> None:
    raw = b'{"json": true}'
    with pytest.raises(RecordError) as err:
        AvroDeserializer("ImageEvent")(raw)
    assert (err.value.stage, err.value.reason, err.value.original) == ("avro", "bad_magic", raw)
    assert fingerprint_of(raw) is None


def test_unknown_fingerprint() -> None:
    message = MAGIC + b"\x00" * 8 + b"\x00"
    with pytest.raises(RecordError, match="0000000000000000 is not known") as err:
        AvroDeserializer("ImageEvent")(message)
    assert err.value.reason == "unknown_schema"
    assert err.value.original == message


def test_message_of_another_record_type() -> None:
    dead = AvroSerializer("DeadLetter")(SAMPLES["DeadLetter"])
    with pytest.raises(
        RecordError, match=r"imagetag\.v1\.DeadLetter message, not imagetag\.v1\.ImageEvent"
    ) as err:
        AvroDeserializer("ImageEvent")(dead)
    assert err.value.reason == "unknown_schema"


@pytest.mark.parametrize("cut", [1, 100, 1000])
def test_truncated_body(cut: int) -> None:
    message = AvroSerializer("ImageEvent")(SAMPLES["ImageEvent"])
    with pytest.raises(RecordError) as err:
        AvroDeserializer("ImageEvent")(message[:-cut])
    assert err.value.reason == "malformed"
    assert err.value.original == message[:-cut]


def test_trailing_bytes() -> None:
    message = AvroSerializer("ImageEvent")(SAMPLES["ImageEvent"]) + b"\x00"
    with pytest.raises(RecordError, match="1 bytes after the record"):
        AvroDeserializer("ImageEvent")(message)


@pytest.mark.parametrize(
    "change",
    [{"id": 42}, {"produced_at": "yesterday"}, {"metadata": {"k": 1}}, {"extra": "field"}],
)
def test_serializer_refuses_what_does_not_fit(change: dict[str, Any]) -> None:
    with pytest.raises(RecordError) as err:
        AvroSerializer("ImageEvent")({**SAMPLES["ImageEvent"], **change})
    assert (err.value.stage, err.value.reason) == ("avro", "schema_mismatch")


def test_missing_required_field() -> None:
    event = dict(SAMPLES["ImageEvent"])
    del event["image"]
    with pytest.raises(RecordError, match="schema_mismatch"):
        AvroSerializer("ImageEvent")(event)


# -- plumbing ----------------------------------------------------------------------------


def test_serde_pickles_for_spark() -> None:
    serialize = pickle.loads(pickle.dumps(AvroSerializer("TagResult")))
    deserialize = pickle.loads(pickle.dumps(AvroDeserializer("TagResult")))
    assert deserialize(serialize(SAMPLES["TagResult"]))["id"] == SAMPLES["TagResult"]["id"]


def test_schemas_dir_is_the_repo_folder_and_errors_clearly(tmp_path: Path) -> None:
    assert schemas_dir() == Path(__file__).resolve().parents[2] / "imagetag" / "schemas"
    with pytest.raises(ConfigError, match="Avro schemas not found"):
        schemas_dir(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        AvroSerializer("ImageEvent", directory=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_schema("NoSuchRecord")
