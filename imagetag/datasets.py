"""Low-level, lazy readers for the image corpora we ingest and train on.

Shared by the producer sources (``producers/sources.py``) and the training job. Every reader
is a generator of :class:`Record` (a name, encoded image bytes, an optional label) that holds
at most one record (or one CIFAR batch file, or one SequenceFile block) in memory: files are
read record by record or memory-mapped, never loaded whole.

Formats:

- **idx** (MNIST / Fashion-MNIST), optionally gzip-compressed: big-endian header
  ``00 00 <type> <ndim>`` + ``ndim`` uint32 sizes, then the array row-major. Pixels become
  grayscale PNGs.
- **CIFAR-10 / CIFAR-100 python batches**: pickled dicts ``{b"data": uint8[N, 3072],
  b"labels": [...], b"filenames": [...]}``; each row is 1024 red, 1024 green, 1024 blue
  bytes, each plane row-major 32×32. Label names come from ``batches.meta`` beside the batch.
  Unpickling is restricted to the numpy types such a file needs (pickle runs code otherwise).
- **Tiny Images** ``tiny_images.bin``: headerless 3072-byte records. Each record is a MATLAB
  ``uint8[32, 32, 3]`` array stored column-major: the red plane first, and inside a plane the
  pixels column by column (``img[0,0], img[1,0], ... img[31,0], img[0,1], ...``), i.e.
  ``numpy.frombuffer(rec, uint8).reshape(32, 32, 3, order="F")`` is ``[row, col, RGB]``.
  (Reading it row-major gives a transposed image.)
- **Hadoop SequenceFile** (version 6, as ``SequenceFile.Writer`` writes it) of
  ``(Text filename, BytesWritable bytes)``: uncompressed, record-compressed and
  block-compressed, with ``DefaultCodec`` (zlib), ``GzipCodec`` or ``BZip2Codec``.
- **folders** of image files, labels from the parent folder name or a ``path,label`` CSV.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import pickle
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

import cv2
import numpy as np

from imagetag.errors import ImagetagError

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_LABELS: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

TINY_IMAGE_BYTES = 32 * 32 * 3


class DatasetError(ImagetagError, ValueError):
    """A dataset file is missing, malformed or in a variant we do not read."""


@dataclass(frozen=True)
class Record:
    """One image of a corpus: a name unique within its file/folder, encoded bytes, a label."""

    name: str
    data: bytes = field(repr=False)
    label: str | None = None


def _png(pixels: np.ndarray) -> bytes:
    """Encode a gray (H, W) or BGR (H, W, 3) uint8 array as PNG bytes."""
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported shapes/dtypes
        raise DatasetError(f"cannot encode a {pixels.shape} {pixels.dtype} array as PNG")
    return buf.tobytes()


def _slice(total: int, start: int, count: int | None) -> range:
    if start < 0:
        raise DatasetError(f"start must be >= 0, got {start}")
    if count is not None and count < 0:
        raise DatasetError(f"count must be >= 0, got {count}")
    stop = total if count is None else min(total, start + count)
    return range(min(start, total), stop)


# -- idx (MNIST, Fashion-MNIST) ----------------------------------------------------------------

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_maybe_gzip(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # the caller closes it


def _idx_header(stream: IO[bytes], path: Path) -> tuple[np.dtype[Any], tuple[int, ...]]:
    head = stream.read(4)
    if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an idx file (header {head.hex()})")
    ndim = head[3]
    raw = stream.read(4 * ndim)
    if len(raw) != 4 * ndim:
        raise DatasetError(f"{path}: truncated idx header")
    return _IDX_TYPES[head[2]], struct.unpack(f">{ndim}I", raw)


def read_idx(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    start: int = 0,
    count: int | None = None,
    label_names: list[str] | None = None,
) -> Iterator[Record]:
    """Yield the images of an idx file (gzip or not) as PNG records, one at a time.

    ``images_path`` holds uint8 ``[N, rows, cols]`` (gray) or ``[N, rows, cols, 1|3]`` (RGB)
    arrays. ``labels_path`` (an idx ``[N]`` integer file) gives each record's label, mapped
    through ``label_names`` when given (``str(int)`` otherwise). ``start``/``count`` select a
    range. Names are ``<images file name>#<index>``. Raises DatasetError for a malformed file
    or mismatched label count.
    """
    images_path = Path(images_path)
    with _open_maybe_gzip(images_path) as images:
        dtype, shape = _idx_header(images, images_path)
        if (
            dtype != np.uint8
            or len(shape) not in (3, 4)
            or (len(shape) == 4 and shape[3] != 1 and shape[3] != 3)
        ):
            raise DatasetError(
                f"{images_path}: expected uint8 [N, H, W(, 1|3)] images, got {dtype} {shape}"
            )
        total, item_shape = shape[0], shape[1:]
        item_bytes = int(np.prod(item_shape))
        labels_file: BinaryIO | None = None
        try:
            label_dtype = np.dtype(np.uint8)
            if labels_path is not None:
                labels_file = _open_maybe_gzip(Path(labels_path))
                label_dtype, label_shape = _idx_header(labels_file, Path(labels_path))
                if len(label_shape) != 1 or label_shape[0] != total:
                    raise DatasetError(
                        f"{labels_path}: {label_shape} labels for {total} images in {images_path}"
                    )
            selected = _slice(total, start, count)
            if selected.start:
                # gzip streams can only seek forward by decompressing: still O(1) memory.
                images.seek(images.tell() + selected.start * item_bytes)
                if labels_file is not None:
                    labels_file.seek(labels_file.tell() + selected.start * label_dtype.itemsize)
            for index in selected:
                raw = images.read(item_bytes)
                if len(raw) != item_bytes:
                    raise DatasetError(f"{images_path}: truncated at image {index}")
                pixels = np.frombuffer(raw, np.uint8).reshape(item_shape)
                if pixels.ndim == 3:
                    pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, ::-1]
                label: str | None = None
                if labels_file is not None:
                    raw_label = labels_file.read(label_dtype.itemsize)
                    if len(raw_label) != label_dtype.itemsize:
                        raise DatasetError(f"{labels_path}: truncated at label {index}")
                    value = int(np.frombuffer(raw_label, label_dtype)[0])
                    label = _label_name(value, label_names, labels_path)
                yield Record(f"{images_path.name}#{index}", _png(pixels), label)
        finally:
            if labels_file is not None:
                labels_file.close()


def _label_name(value: int, names: list[str] | None, where: object) -> str:
    if names is None:
        return str(value)
    if not 0 <= value < len(names):
        raise DatasetError(f"{where}: label {value} outside the {len(names)} label names")
    return names[value]


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an idx file (gzip when ``compress`` or the name ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    use_gzip = path.suffix == ".gz" if compress is None else compress
    opener = gzip.open if use_gzip else open
    with opener(path, "wb") as out:
        out.write(header)
        out.write(array.tobytes())


def fashion_mnist_paths(
    split: Literal["train", "test"], root: str | Path = FASHION_MNIST_ROOT
) -> tuple[Path, Path]:
    """(images, labels) idx paths of a Fashion-MNIST split under ``root``.

    Debian's ``dataset-fashion-mnist`` installs ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
    in /usr/share/datasets/fashion-mnist; uncompressed copies are accepted too. Raises
    DatasetError when the files are not there.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    found: list[Path] = []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [root / f"{prefix}-{kind}-ubyte.gz", root / f"{prefix}-{kind}-ubyte"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DatasetError(
                f"Fashion-MNIST {split} {kind.split('-')[0]} not found in {root} "
                "(apt-get install dataset-fashion-mnist)"
            )
        found.append(path)
    return found[0], found[1]


# -- CIFAR-10 / CIFAR-100 python batches -----------------------------------------------------

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name} from a dataset file")


def _load_pickle(path: Path) -> dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            # CIFAR's batches were written by Python 2's cPickle: str means bytes.
            data = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path} is not a python pickle batch: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(data).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_cifar10(
    batch_path: str | Path, start: int = 0, count: int | None = None
) -> Iterator[Record]:
    """Yield the images of one CIFAR-10 (or CIFAR-100) python batch as 32×32 RGB PNG records.

    Label names come from ``batches.meta`` (``meta`` for CIFAR-100, fine labels) in the same
    folder; without it labels are the class numbers. Names are the batch's ``filenames``.
    One batch file (~30 MB) is unpickled at a time. Raises DatasetError for a malformed batch.
    """
    batch_path = Path(batch_path)
    batch = _load_pickle(batch_path)
    labels_key = "labels" if "labels" in batch else "fine_labels"
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = list(batch[labels_key])
    except KeyError as exc:
        raise DatasetError(f"{batch_path}: no {exc} entry; not a CIFAR python batch") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DatasetError(f"{batch_path}: data {data.shape} / {len(labels)} labels")
    filenames = batch.get("filenames")
    names = _cifar_label_names(batch_path.parent)
    for index in _slice(data.shape[0], start, count):
        # row = R plane, G plane, B plane (each 32×32 row-major) -> BGR [H, W, 3] for OpenCV
        bgr = data[index].reshape(3, 32, 32)[::-1].transpose(1, 2, 0)
        name = _text(filenames[index]) if filenames is not None else f"{batch_path.name}#{index}"
        yield Record(
            name,
            _png(np.ascontiguousarray(bgr)),
            _label_name(int(labels[index]), names, batch_path),
        )


def _cifar_label_names(folder: Path) -> list[str] | None:
    for meta_name, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        meta_path = folder / meta_name
        if meta_path.is_file():
            meta = _load_pickle(meta_path)
            if key in meta:
                return [_text(n) for n in meta[key]]
    return None


def cifar10_batches(folder: str | Path) -> list[Path]:
    """The batch files of an extracted ``cifar-10-batches-py`` folder (train batches, then test)."""
    folder = Path(folder)
    batches = sorted(folder.glob("data_batch_*")) + sorted(folder.glob("test_batch*"))
    batches += [folder / n for n in ("train", "test") if (folder / n).is_file()]  # CIFAR-100
    return batches


# -- Tiny Images ----------------------------------------------------------------------------


def read_tiny_images(
    bin_path: str | Path, start: int = 0, count: int | None = None
) -> Iterator[Record]:
    """Yield records ``start .. start+count`` of a Tiny Images ``.bin`` as 32×32 RGB PNGs.

    The file is memory-mapped (the real one is 227 GB); see the module docstring for the
    column-major layout. Names are ``<file name>#<index>``; there are no labels. Raises
    DatasetError when the file size is not a multiple of 3072.
    """
    bin_path = Path(bin_path)
    total = count_tiny_images(bin_path)
    selected = _slice(total, start, count)
    if not selected:
        return
    records = np.memmap(bin_path, dtype=np.uint8, mode="r", shape=(total, TINY_IMAGE_BYTES))
    for index in selected:
        rgb = records[index].reshape(32, 32, 3, order="F")
        yield Record(f"{bin_path.name}#{index}", _png(np.ascontiguousarray(rgb[:, :, ::-1])), None)


def write_tiny_images(path: str | Path, images: Iterable[np.ndarray]) -> None:
    """Append RGB uint8 [32, 32, 3] arrays to a Tiny Images ``.bin`` (column-major records)."""
    with open(path, "ab") as out:
        for rgb in images:
            if rgb.shape != (32, 32, 3):
                raise DatasetError(f"Tiny Images records are 32×32×3, got {rgb.shape}")
            out.write(np.asarray(rgb, dtype=np.uint8).tobytes(order="F"))


# -- Hadoop SequenceFile --------------------------------------------------------------------

_SEQ_MAGIC = b"SEQ"
_SEQ_VERSION = 6  # VERSION_WITH_METADATA
_SYNC_ESCAPE = -1
_SYNC_HASH_SIZE = 16
_SYNC_INTERVAL = 5 * 1024 * (4 + _SYNC_HASH_SIZE)  # SequenceFile.SYNC_INTERVAL (100 KB)
_BLOCK_SIZE = 1_000_000  # io.seqfile.compress.blocksize default
TEXT_CLASS = "org.apache.hadoop.io.Text"
BYTES_WRITABLE_CLASS = "org.apache.hadoop.io.BytesWritable"
_CODECS = {
    "default": "org.apache.hadoop.io.compress.DefaultCodec",
    "gzip": "org.apache.hadoop.io.compress.GzipCodec",
    "bzip2": "org.apache.hadoop.io.compress.BZip2Codec",
}


def _write_vint(out: IO[bytes], value: int) -> None:
    """Hadoop ``WritableUtils.writeVLong`` (zero-compressed integer)."""
    if -112 <= value <= 127:
        out.write(struct.pack(">b", value))
        return
    length = -112
    if value < 0:
        value ^= -1
        length = -120
    tmp = value
    while tmp:
        tmp >>= 8
        length -= 1
    out.write(struct.pack(">b", length))
    nbytes = -(length + 120) if length < -120 else -(length + 112)
    out.write(value.to_bytes(nbytes, "big"))


def _read_vint(stream: IO[bytes]) -> int:
    """Hadoop ``WritableUtils.readVLong``; EOFError at the end of the stream."""
    first = stream.read(1)
    if not first:
        raise EOFError
    value = struct.unpack(">b", first)[0]
    if value >= -112:
        return int(value)
    nbytes = (-119 - value) if value < -120 else (-111 - value)
    raw = stream.read(nbytes - 1)
    if len(raw) != nbytes - 1:
        raise EOFError
    result = int.from_bytes(raw, "big")
    return result ^ -1 if value < -120 else result


def _read_text(stream: IO[bytes]) -> str:
    length = _read_vint(stream)
    raw = stream.read(length)
    if len(raw) != length:
        raise EOFError
    return raw.decode("utf-8")


def _text_bytes(value: str) -> bytes:
    buf = io.BytesIO()
    raw = value.encode("utf-8")
    _write_vint(buf, len(raw))
    buf.write(raw)
    return buf.getvalue()


def _decompressor(codec: str | None, path: Path) -> Any:
    if codec is None:
        return None
    if codec == _CODECS["default"]:
        return zlib.decompress
    if codec == _CODECS["gzip"]:
        return gzip.decompress
    if codec == _CODECS["bzip2"]:
        import bz2

        # Hadoop's BZip2Codec stream starts at "h9" (it writes the "BZ" magic separately).
        return lambda raw: bz2.decompress(raw if raw.startswith(b"BZ") else b"BZ" + raw)
    raise DatasetError(f"{path}: SequenceFile codec {codec} is not supported (zlib, gzip, bzip2)")


def _compressor(codec: str | None) -> Any:
    if codec is None:
        return None
    if codec == _CODECS["default"]:
        return zlib.compress
    if codec == _CODECS["gzip"]:
        return lambda raw: gzip.compress(raw, mtime=0)
    raise DatasetError(f"writing SequenceFile codec {codec} is not supported (default, gzip)")


@dataclass(frozen=True)
class _SeqHeader:
    key_class: str
    value_class: str
    compressed: bool
    block_compressed: bool
    codec: str | None
    metadata: dict[str, str]
    sync: bytes


def _read_seq_header(stream: IO[bytes], path: Path) -> _SeqHeader:
    magic = stream.read(4)
    if len(magic) != 4 or magic[:3] != _SEQ_MAGIC:
        raise DatasetError(f"{path} is not a Hadoop SequenceFile")
    version = magic[3]
    if version < 5:  # older files name their key/value classes with UTF8, not Text
        raise DatasetError(f"{path}: SequenceFile version {version} is not supported (5, 6)")
    try:
        key_class = _read_text(stream)
        value_class = _read_text(stream)
        compressed, block_compressed = stream.read(1) == b"\x01", stream.read(1) == b"\x01"
        codec = _read_text(stream) if compressed else None
        metadata: dict[str, str] = {}
        if version >= 6:
            (entries,) = struct.unpack(">i", stream.read(4))
            for _ in range(entries):
                key = _read_text(stream)
                metadata[key] = _read_text(stream)
        sync = stream.read(_SYNC_HASH_SIZE)
    except (EOFError, struct.error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: truncated or malformed SequenceFile header") from exc
    if len(sync) != _SYNC_HASH_SIZE:
        raise DatasetError(f"{path}: truncated SequenceFile header")
    return _SeqHeader(key_class, value_class, compressed, block_compressed, codec, metadata, sync)


def _decode_key(raw: bytes, key_class: str, path: Path) -> str:
    stream = io.BytesIO(raw)
    if key_class == TEXT_CLASS:
        return _read_text(stream)
    if key_class == BYTES_WRITABLE_CLASS:
        (length,) = struct.unpack(">i", stream.read(4))
        return stream.read(length).decode("utf-8", errors="replace")
    raise DatasetError(f"{path}: key class {key_class} is not supported (Text, BytesWritable)")


def _decode_value(raw: bytes, value_class: str, path: Path) -> bytes:
    if value_class == BYTES_WRITABLE_CLASS:
        (length,) = struct.unpack(">i", raw[:4])
        if length != len(raw) - 4:
            raise DatasetError(
                f"{path}: BytesWritable of {length} bytes in a {len(raw) - 4}-byte record"
            )
        return raw[4:]
    if value_class == TEXT_CLASS:
        stream = io.BytesIO(raw)
        length = _read_vint(stream)
        return stream.read(length)
    raise DatasetError(f"{path}: value class {value_class} is not supported (BytesWritable, Text)")


def _iter_seq_raw(path: Path, decompress_values: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """(serialized key, serialized value) pairs of a SequenceFile, in file order."""
    with open(path, "rb") as stream:
        header = _read_seq_header(stream, path)
        decompress = _decompressor(header.codec, path) if decompress_values else None

        def read_exact(n: int, what: str) -> bytes:
            raw = stream.read(n)
            if len(raw) != n:
                raise DatasetError(f"{path}: truncated {what}")
            return raw

        if header.block_compressed:
            block_decompress = _decompressor(header.codec, path)
            while True:
                escape = stream.read(4)
                if not escape:
                    return
                if len(escape) != 4 or struct.unpack(">i", escape)[0] != _SYNC_ESCAPE:
                    raise DatasetError(f"{path}: expected a sync marker before a block")
                if read_exact(_SYNC_HASH_SIZE, "sync marker") != header.sync:
                    raise DatasetError(f"{path}: sync marker mismatch (corrupt file)")
                try:
                    records = _read_vint(stream)
                    buffers = []
                    for _ in range(4):
                        size = _read_vint(stream)
                        buffers.append(read_exact(size, "block"))
                except EOFError as exc:
                    raise DatasetError(f"{path}: truncated block") from exc
                key_lens = io.BytesIO(block_decompress(buffers[0]))
                keys = io.BytesIO(block_decompress(buffers[1]))
                val_lens = io.BytesIO(block_decompress(buffers[2]))
                values = io.BytesIO(block_decompress(buffers[3])) if decompress_values else None
                for _ in range(records):
                    key = keys.read(_read_vint(key_lens))
                    val_len = _read_vint(val_lens)
                    yield key, values.read(val_len) if values is not None else b""
        while True:
            head = stream.read(4)
            if not head:
                return
            if len(head) != 4:
                raise DatasetError(f"{path}: truncated record length")
            (record_len,) = struct.unpack(">i", head)
            if record_len == _SYNC_ESCAPE:
                if read_exact(_SYNC_HASH_SIZE, "sync marker") != header.sync:
                    raise DatasetError(f"{path}: sync marker mismatch (corrupt file)")
                continue
            (key_len,) = struct.unpack(">i", read_exact(4, "key length"))
            if not 0 <= key_len <= record_len:
                raise DatasetError(f"{path}: key length {key_len} in a {record_len}-byte record")
            key = read_exact(key_len, "key")
            if not decompress_values:
                stream.seek(record_len - key_len, os.SEEK_CUR)
                yield key, b""
                continue
            value = read_exact(record_len - key_len, "value")
            yield key, decompress(value) if decompress is not None else value


def read_sequence_file(path: str | Path) -> Iterator[Record]:
    """Yield the (Text filename, BytesWritable bytes) pairs of a Hadoop SequenceFile.

    Reads uncompressed, record- and block-compressed files (zlib ``DefaultCodec``, ``GzipCodec``,
    ``BZip2Codec``) record by record (a block at a time for block compression). A record's
    label is None (the file carries none). Raises DatasetError for a malformed or truncated file
    or an unsupported codec / key / value class.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        header = _read_seq_header(stream, path)
    try:
        for key, value in _iter_seq_raw(path):
            yield Record(
                _decode_key(key, header.key_class, path),
                _decode_value(value, header.value_class, path),
                None,
            )
    except (zlib.error, OSError, EOFError, struct.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DatasetError(f"{path}: corrupt SequenceFile record: {exc}") from exc


def write_sequence_file(
    path: str | Path,
    records: Iterable[Record | tuple[str, bytes]],
    compression: Literal["none", "record", "block"] = "none",
    codec: Literal["default", "gzip"] = "default",
    metadata: dict[str, str] | None = None,
    sync_marker: bytes | None = None,
) -> int:
    """Write (Text name, BytesWritable data) pairs as Hadoop's ``SequenceFile.Writer`` does.

    Same header (version 6, class names, codec, sorted metadata, 16-byte sync marker), same
    record framing, a sync escape every ~100 KB (uncompressed / record) or before every block
    of ~1 MB (block compression). Returns the number of records written.
    """
    path = Path(path)
    # Hadoop uses the MD5 of a fresh UID and the time: 16 bytes that are unique per file.
    sync = sync_marker or os.urandom(_SYNC_HASH_SIZE)
    codec_class = _CODECS[codec] if compression != "none" else None
    compress = _compressor(codec_class)
    written = 0
    with open(path, "wb") as out:
        out.write(_SEQ_MAGIC + bytes([_SEQ_VERSION]))
        out.write(_text_bytes(TEXT_CLASS))
        out.write(_text_bytes(BYTES_WRITABLE_CLASS))
        out.write(b"\x01" if compression != "none" else b"\x00")
        out.write(b"\x01" if compression == "block" else b"\x00")
        if codec_class is not None:
            out.write(_text_bytes(codec_class))
        meta = dict(sorted((metadata or {}).items()))  # Metadata keeps a TreeMap
        out.write(struct.pack(">i", len(meta)))
        for k, v in meta.items():
            out.write(_text_bytes(k) + _text_bytes(v))
        out.write(sync)
        last_sync = 0  # Writer.lastSyncPos starts at 0

        def write_sync() -> None:
            nonlocal last_sync
            if out.tell() != last_sync:
                out.write(struct.pack(">i", _SYNC_ESCAPE) + sync)
                last_sync = out.tell()

        block: list[tuple[bytes, bytes]] = []
        block_bytes = 0

        def flush_block() -> None:
            nonlocal block_bytes
            if not block:
                return
            write_sync()
            _write_vint(out, len(block))
            key_lens, val_lens = io.BytesIO(), io.BytesIO()
            for k, v in block:
                _write_vint(key_lens, len(k))
                _write_vint(val_lens, len(v))
            for raw in (
                key_lens.getvalue(),
                b"".join(k for k, _ in block),
                val_lens.getvalue(),
                b"".join(v for _, v in block),
            ):
                packed = compress(raw)
                _write_vint(out, len(packed))
                out.write(packed)
            block.clear()
            block_bytes = 0

        for item in records:
            name, data = (item.name, item.data) if isinstance(item, Record) else item
            key = _text_bytes(name)
            value = struct.pack(">i", len(data)) + bytes(data)
            written += 1
            if compression == "block":
                block.append((key, value))
                block_bytes += len(key) + len(value)
                if block_bytes >= _BLOCK_SIZE:
                    flush_block()
                continue
            if compression == "record":
                value = compress(value)
            if out.tell() >= last_sync + _SYNC_INTERVAL:
                write_sync()
            out.write(struct.pack(">ii", len(key) + len(value), len(key)))
            out.write(key)
            out.write(value)
        flush_block()
    return written


# -- folders --------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob with ``**`` (any depth), ``*``, ``?`` and ``[...]`` to a regex on
    POSIX relative paths."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def iter_files(root: str | Path, patterns: Iterable[str] = ("**/*",)) -> Iterator[Path]:
    """Files under ``root`` whose path relative to ``root`` matches any glob pattern.

    Walks the tree lazily in sorted order (deterministic), skips hidden files and folders
    (names starting with ``.``) as ``glob`` does, and follows no symlinked folders.
    A ``root`` that is a file yields just that file.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise DatasetError(f"{root} is neither a file nor a folder")
    regexes = [_glob_regex(p) for p in patterns]
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(root)
        for name in sorted(files):
            if name.startswith("."):
                continue
            rel = (rel_folder / name).as_posix()
            if any(r.match(rel) for r in regexes):
                yield Path(folder) / name


def read_label_csv(csv_path: str | Path) -> dict[str, str]:
    """``path,label`` rows (an optional ``path,label`` header) as {normalised path: label}."""
    csv_path = Path(csv_path)
    labels: dict[str, str] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for line_no, row in enumerate(csv.reader(f), start=1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise DatasetError(f"{csv_path}:{line_no}: expected 'path,label'")
                path, label = row[0].strip(), row[1].strip()
                if line_no == 1 and (path.lower(), label.lower()) == ("path", "label"):
                    continue
                labels[os.path.normpath(path)] = label
    except OSError as exc:
        raise DatasetError(f"cannot read label CSV {csv_path}: {exc}") from exc
    return labels


class LabelLookup:
    """Finds the label of a file under ``root``: from its parent folder, a CSV, or none.

    CSV paths may be relative to ``root``, relative to the CSV's folder, or absolute.
    """

    def __init__(self, root: str | Path, label_from: Literal["folder"] | str | Path | None) -> None:
        self.root = Path(root)
        self.mode = label_from
        self.csv: dict[str, str] = {}
        self.csv_dir: Path | None = None
        if label_from is not None and label_from != "folder":
            self.csv = read_label_csv(label_from)
            self.csv_dir = Path(label_from).resolve().parent

    def __call__(self, path: Path) -> str | None:
        if self.mode is None:
            return None
        base = self.root if self.root.is_dir() else self.root.parent
        if self.mode == "folder":
            parent = path.parent
            return parent.name if parent.resolve() != base.resolve() else None
        candidates = [
            os.path.normpath(path.relative_to(base)) if path.is_relative_to(base) else None
        ]
        resolved = path.resolve()
        candidates.append(str(resolved))
        if self.csv_dir is not None and resolved.is_relative_to(self.csv_dir):
            candidates.append(os.path.normpath(resolved.relative_to(self.csv_dir)))
        for candidate in candidates:
            if candidate is not None and candidate in self.csv:
                return self.csv[candidate]
        return None


def read_folder(
    root: str | Path,
    patterns: Iterable[str] = ("**/*",),
    label_from: Literal["folder"] | str | Path | None = None,
    errors: Literal["raise", "skip"] = "raise",
) -> Iterator[Record]:
    """Yield the files under ``root`` (recursive, glob-filtered, sorted) as records.

    ``label_from="folder"`` labels each file with its parent folder's name (files directly
    in ``root`` get None); a path to a ``path,label`` CSV labels the files it lists. The
    record name is the path relative to ``root``. Bytes are not checked here (the producer
    sniffs them). An unreadable file raises DatasetError, or is logged and skipped with
    ``errors="skip"``.
    """
    root = Path(root)
    lookup = LabelLookup(root, label_from)
    base = root if root.is_dir() else root.parent
    for path in iter_files(root, patterns):
        try:
            data = path.read_bytes()
        except OSError as exc:
            if errors == "skip":
                log.warning("skipping unreadable %s: %s", path, exc)
                continue
            raise DatasetError(f"cannot read {path}: {exc}") from exc
        yield Record(path.relative_to(base).as_posix(), data, lookup(path))


# -- sniffing and counting (one format at a time; imagetag.sourceformats combines them) -------


def head(path: str | Path, size: int = 4, gunzip: bool = False) -> bytes:
    """The first ``size`` bytes of a file (of its gzip content with ``gunzip``); b"" when it
    cannot be read."""
    try:
        with _open_maybe_gzip(Path(path)) if gunzip else open(path, "rb") as stream:
            return stream.read(size)
    except (OSError, EOFError, gzip.BadGzipFile):
        return b""


def is_idx(path: str | Path) -> bool:
    """An idx header (``00 00 <type> <ndim>``), gzip-compressed or not."""
    magic = head(path, gunzip=True)
    return len(magic) == 4 and magic[:2] == b"\x00\x00" and magic[2] in _IDX_TYPES


def count_idx(path: str | Path) -> int:
    """The first dimension of an idx file, from its header."""
    with _open_maybe_gzip(Path(path)) as stream:
        return _idx_header(stream, Path(path))[1][0]


def is_sequence_file(path: str | Path) -> bool:
    return head(path)[:3] == _SEQ_MAGIC


def count_sequence_file(path: str | Path) -> int:
    """Records of a SequenceFile: scans the framing, skipping the values."""
    return sum(1 for _ in _iter_seq_raw(Path(path), decompress_values=False))


def count_cifar(batch_path: str | Path) -> int:
    """Images of one CIFAR python batch (unpickles the batch)."""
    batch = _load_pickle(Path(batch_path))
    return len(batch.get("labels", batch.get("fine_labels", [])))


def count_tiny_images(bin_path: str | Path) -> int:
    """Records of a Tiny Images ``.bin``, from its size; DatasetError when it is not a multiple
    of 3072."""
    size = Path(bin_path).stat().st_size
    if size % TINY_IMAGE_BYTES:
        raise DatasetError(f"{bin_path}: size {size} is not a multiple of {TINY_IMAGE_BYTES}")
    return size // TINY_IMAGE_BYTES
