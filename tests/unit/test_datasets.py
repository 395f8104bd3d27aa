"""Each dataset reader on data the test writes itself in that format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from imagetag import datasets, sourceformats
from imagetag.datasets import (
    FASHION_MNIST_LABELS,
    DatasetError,
    Record,
    fashion_mnist_paths,
    read_cifar10,
    read_folder,
    read_idx,
    read_sequence_file,
    read_tiny_images,
    write_idx,
    write_sequence_file,
    write_tiny_images,
)
from imagetag.formats import sniff_format
from producers import sources
from producers.sources import SourceItem, open_source


def _count(path: Path) -> int:
    """Records in a dataset file or folder, as every job counts them (the registry)."""
    return sourceformats.count(sourceformats.sniff(str(path)), path)


def _decode(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None
    return img


def _rgb(seed: int, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- idx ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_and_labels(tmp_path: Path, suffix: str) -> None:
    images = _rgb(1, (5, 28, 28))
    labels = np.array([3, 0, 9, 1, 1], dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lbl{suffix}", labels)
    if suffix:
        assert (tmp_path / f"img{suffix}").read_bytes()[:2] == b"\x1f\x8b"

    records = list(
        read_idx(
            tmp_path / f"img{suffix}", tmp_path / f"lbl{suffix}", label_names=FASHION_MNIST_LABELS
        )
    )
    assert [r.label for r in records] == [
        "Dress",
        "T-shirt/top",
        "Ankle boot",
        "Trouser",
        "Trouser",
    ]
    assert [r.name for r in records] == [f"img{suffix}#{i}" for i in range(5)]
    for record, expected in zip(records, images, strict=True):
        assert sniff_format(record.data) == "png"
        np.testing.assert_array_equal(_decode(record.data), expected)

    window = list(read_idx(tmp_path / f"img{suffix}", tmp_path / f"lbl{suffix}", start=2, count=2))
    assert [r.label for r in window] == ["9", "1"]
    np.testing.assert_array_equal(_decode(window[0].data), images[2])
    assert list(read_idx(tmp_path / f"img{suffix}", start=10)) == []
    assert _count(tmp_path / f"img{suffix}") == 5


def test_idx_rejects_mismatch_and_garbage(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", _rgb(2, (3, 4, 4)))
    write_idx(tmp_path / "lbl", np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="labels for 3 images"):
        list(read_idx(tmp_path / "img", tmp_path / "lbl"))
    (tmp_path / "junk").write_bytes(b"not an idx file")
    with pytest.raises(DatasetError, match="not an idx file"):
        list(read_idx(tmp_path / "junk"))
    truncated = (tmp_path / "img").read_bytes()[:-5]
    (tmp_path / "trunc").write_bytes(truncated)
    with pytest.raises(DatasetError, match="truncated at image 2"):
        list(read_idx(tmp_path / "trunc"))


def test_fashion_mnist_paths(tmp_path: Path) -> None:
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert fashion_mnist_paths("train", tmp_path) == (
        tmp_path / "train-images-idx3-ubyte.gz",
        tmp_path / "train-labels-idx1-ubyte.gz",
    )
    assert fashion_mnist_paths("test", tmp_path)[0].name == "t10k-images-idx3-ubyte"
    with pytest.raises(DatasetError, match="not found"):
        fashion_mnist_paths("train", tmp_path / "missing")
    assert len(FASHION_MNIST_LABELS) == 10


@pytest.mark.skipif(
    not datasets.FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_first_records() -> None:
    images, labels = fashion_mnist_paths("test")
    assert _count(images) == 10_000
    records = list(read_idx(images, labels, count=3, label_names=FASHION_MNIST_LABELS))
    # The first three test labels of Fashion-MNIST are 9, 2, 1.
    assert [r.label for r in records] == ["Ankle boot", "Pullover", "Trouser"]
    assert _decode(records[0].data).shape == (28, 28)


# -- CIFAR-10 -----------------------------------------------------------------------------


def _write_cifar(folder: Path, images: np.ndarray, labels: list[int], meta: bool = True) -> Path:
    folder.mkdir(exist_ok=True)
    # Layout of the real batches: row = R plane, G plane, B plane, each 32×32 row-major.
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    if meta:
        names = [
            n.encode()
            for n in [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]
        ]
        (folder / "batches.meta").write_bytes(
            pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
        )
    return path


def test_cifar10_batch(tmp_path: Path) -> None:
    images = _rgb(3, (4, 32, 32, 3))
    path = _write_cifar(tmp_path / "cifar-10-batches-py", images, [3, 5, 0, 9])
    records = list(read_cifar10(path))
    assert [r.label for r in records] == ["cat", "dog", "airplane", "truck"]
    assert [r.name for r in records] == [f"img_{i}.png" for i in range(4)]
    for record, rgb in zip(records, images, strict=True):
        np.testing.assert_array_equal(_decode(record.data), rgb[:, :, ::-1])  # PNG decodes as BGR
    assert [r.name for r in read_cifar10(path, start=1, count=2)] == ["img_1.png", "img_2.png"]
    assert _count(path) == 4
    assert datasets.cifar10_batches(path.parent) == [path]


def test_cifar10_without_meta_uses_numbers(tmp_path: Path) -> None:
    path = _write_cifar(tmp_path / "c", _rgb(4, (2, 32, 32, 3)), [7, 1], meta=False)
    assert [r.label for r in read_cifar10(path)] == ["7", "1"]


def test_cifar10_refuses_code_in_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        list(read_cifar10(path))


# -- Tiny Images --------------------------------------------------------------------------


def test_tiny_images_layout_and_window(tmp_path: Path) -> None:
    images = [_rgb(10 + i) for i in range(6)]
    images[0][0, :, :] = 255  # white top row: catches a transposed (row-major) reading
    images[0][1:, :, :] = 0
    path = tmp_path / "tiny_images.bin"
    write_tiny_images(path, images)
    raw = path.read_bytes()
    assert len(raw) == 6 * 3072
    # Column-major per channel: byte k of the red plane is pixel (row k % 32, col k // 32).
    red_plane = np.frombuffer(raw[:1024], np.uint8)
    assert red_plane[0] == 255 and red_plane[1] == 0 and red_plane[32] == 255

    records = list(read_tiny_images(path, start=0, count=6))
    assert [r.name for r in records] == [f"tiny_images.bin#{i}" for i in range(6)]
    for record, rgb in zip(records, images, strict=True):
        assert record.label is None
        np.testing.assert_array_equal(_decode(record.data), rgb[:, :, ::-1])
    assert [r.name for r in read_tiny_images(path, start=4, count=10)] == [
        "tiny_images.bin#4",
        "tiny_images.bin#5",
    ]
    assert _count(path) == 6


def test_tiny_images_rejects_partial_records(tmp_path: Path) -> None:
    path = tmp_path / "broken.bin"
    path.write_bytes(b"\x00" * 3000)
    with pytest.raises(DatasetError, match="multiple of 3072"):
        list(read_tiny_images(path))


# -- Hadoop SequenceFile ------------------------------------------------------------------


def _png_records(n: int, size: int = 32) -> list[Record]:
    out = []
    for i in range(n):
        ok, buf = cv2.imencode(".png", _rgb(100 + i, (size, size, 3)))
        assert ok
        out.append(Record(f"photos/img_{i:04d}.png", buf.tobytes(), None))
    return out


@pytest.mark.parametrize("compression", ["none", "record", "block"])
@pytest.mark.parametrize("codec", ["default", "gzip"])
def test_sequence_file_round_trip(tmp_path: Path, compression: str, codec: str) -> None:
    records = _png_records(60, size=48)  # ~7 KB each: > 100 KB, so sync markers appear
    path = tmp_path / "part-00000"
    assert write_sequence_file(path, records, compression=compression, codec=codec) == 60  # type: ignore[arg-type]
    assert list(read_sequence_file(path)) == records
    assert _count(path) == 60


def test_sequence_file_bytes_match_hadoop_writer(tmp_path: Path) -> None:
    """Byte layout of an uncompressed file as org.apache.hadoop.io.SequenceFile.Writer writes it."""
    sync = bytes(range(16))
    path = tmp_path / "f.seq"
    write_sequence_file(path, [("a.png", b"\x89PNG")], metadata={"k": "v"}, sync_marker=sync)
    expected = (
        b"SEQ\x06"
        + b"\x19org.apache.hadoop.io.Text"
        + b"\x22org.apache.hadoop.io.BytesWritable"
        + b"\x00\x00"  # not compressed, not block-compressed
        + struct.pack(">i", 1)
        + b"\x01k\x01v"  # metadata
        + sync
        + struct.pack(">ii", 6 + 8, 6)  # record length, key length
        + b"\x05a.png"  # Text key: vint length + UTF-8
        + struct.pack(">i", 4)
        + b"\x89PNG"  # BytesWritable: int length + bytes
    )
    assert path.read_bytes() == expected


def test_sequence_file_record_compressed_values_are_zlib(tmp_path: Path) -> None:
    path = tmp_path / "f.seq"
    write_sequence_file(path, [("x", b"GIF89a")], compression="record", sync_marker=b"S" * 16)
    raw = path.read_bytes()
    header_end = raw.index(b"S" * 16) + 16
    assert b"org.apache.hadoop.io.compress.DefaultCodec" in raw[:header_end]
    record_len, key_len = struct.unpack(">ii", raw[header_end : header_end + 8])
    value = raw[header_end + 8 + key_len : header_end + 8 + record_len]
    assert zlib.decompress(value) == struct.pack(">i", 6) + b"GIF89a"


def test_sequence_file_vints_round_trip() -> None:
    import io

    for value in [0, 1, -1, 127, 128, -112, -113, 255, 256, 65535, 2**31 - 1, -(2**31), 2**40]:
        buf = io.BytesIO()
        datasets._write_vint(buf, value)
        buf.seek(0)
        assert datasets._read_vint(buf) == value
    buf = io.BytesIO()
    datasets._write_vint(buf, 300)
    assert buf.getvalue() == b"\x8e\x01\x2c"  # Hadoop: 0x8E = -114 -> 2 bytes follow


def test_sequence_file_errors(tmp_path: Path) -> None:
    (tmp_path / "no").write_bytes(b"PK\x03\x04")
    with pytest.raises(DatasetError, match="not a Hadoop SequenceFile"):
        list(read_sequence_file(tmp_path / "no"))
    good = tmp_path / "good"
    write_sequence_file(good, _png_records(2))
    (tmp_path / "cut").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        list(read_sequence_file(tmp_path / "cut"))


# -- folders ------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    for rel in [
        "cats/a.png",
        "cats/b.jpg",
        "dogs/deep/c.png",
        "top.png",
        ".hidden/x.png",
        "dogs/.DS_Store",
        "notes.txt",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


def test_folder_recursive_with_folder_labels(tmp_path: Path) -> None:
    _tree(tmp_path)
    records = list(read_folder(tmp_path, label_from="folder"))
    assert [(r.name, r.label) for r in records] == [
        ("notes.txt", None),
        ("top.png", None),
        ("cats/a.png", "cats"),
        ("cats/b.jpg", "cats"),
        ("dogs/deep/c.png", "deep"),
    ]
    assert records[2].data == b"cats/a.png"
    assert _count(tmp_path) == 5


def test_folder_glob_filters(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert [r.name for r in read_folder(tmp_path, patterns=("**/*.png",))] == [
        "top.png",
        "cats/a.png",
        "dogs/deep/c.png",
    ]
    assert [r.name for r in read_folder(tmp_path, patterns=("*.png",))] == ["top.png"]
    assert [r.name for r in read_folder(tmp_path, patterns=("cats/*", "**/*.txt"))] == [
        "notes.txt",
        "cats/a.png",
        "cats/b.jpg",
    ]
    assert [r.name for r in read_folder(tmp_path, patterns=("**/[ab].*",))] == [
        "cats/a.png",
        "cats/b.jpg",
    ]


def test_folder_labels_from_csv(tmp_path: Path) -> None:
    _tree(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        f"path,label\ncats/a.png,tabby\n{tmp_path / 'top.png'},sky\n./dogs/deep/c.png,pug\n"
    )
    got = {
        r.name: r.label
        for r in read_folder(tmp_path, patterns=("**/*.png", "**/*.jpg"), label_from=labels)
    }
    assert got == {
        "top.png": "sky",
        "cats/a.png": "tabby",
        "cats/b.jpg": None,
        "dogs/deep/c.png": "pug",
    }


def test_folder_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads everything: make an unreadable entry another way (a dangling symlink)
        (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    else:
        (tmp_path / "gone.png").write_bytes(b"x")
        (tmp_path / "gone.png").chmod(0)
    (tmp_path / "ok.png").write_bytes(b"ok")
    with pytest.raises(DatasetError, match="cannot read"):
        list(read_folder(tmp_path))
    assert [r.name for r in read_folder(tmp_path, errors="skip")] == ["ok.png"]


def test_single_file_root(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert [r.name for r in read_folder(tmp_path / "cats" / "a.png")] == ["a.png"]


def test_gzip_helper_detects_by_magic(tmp_path: Path) -> None:
    (tmp_path / "plain.gz").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02")
    assert _count(tmp_path / "plain.gz") == 2
    with gzip.open(tmp_path / "packed", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x01\x02\x03")
    assert _count(tmp_path / "packed") == 3


# -- producer sources on top of the readers -----------------------------------------------


def _items(spec: str, **kwargs: object) -> list[SourceItem]:
    return list(open_source(spec, **kwargs))  # type: ignore[arg-type]


def test_source_folder_yields_paths_with_labels(tmp_path: Path) -> None:
    _tree(tmp_path)
    items = _items(str(tmp_path), label_from="folder", patterns=("**/*.png",))
    assert [(i.metadata["name"], i.label) for i in items] == [
        ("top.png", None),
        ("cats/a.png", "cats"),
        ("dogs/deep/c.png", "deep"),
    ]
    assert items[1].image == tmp_path / "cats" / "a.png"  # the producer reads (and vets) it
    assert items[1].source == (tmp_path / "cats" / "a.png").as_uri()


def test_source_folder_labels_from_csv(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "labels.csv").write_text("cats/b.jpg,tabby\n")
    items = _items(str(tmp_path), label_from=tmp_path / "labels.csv", patterns=("cats/*",))
    assert [(i.metadata["name"], i.label) for i in items] == [
        ("cats/a.png", None),
        ("cats/b.jpg", "tabby"),
    ]


def test_source_single_and_missing_files(tmp_path: Path) -> None:
    _tree(tmp_path)
    [item] = _items(str(tmp_path / "top.png"))
    assert item.image == tmp_path / "top.png"
    [missing] = _items(str(tmp_path / "nope.png"))  # refused later as unreadable, not here
    assert missing.image == tmp_path / "nope.png"


def test_source_cifar_folder_and_range(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, _rgb(5, (3, 32, 32, 3)), [1, 2, 3])
    second = folder / "data_batch_1"
    second.rename(folder / "data_batch_2")
    _write_cifar(folder, _rgb(6, (3, 32, 32, 3)), [4, 5, 6])
    items = _items(str(folder))
    assert [i.label for i in items] == ["deer", "dog", "frog", "automobile", "bird", "cat"]
    assert items[0].source == (folder / "data_batch_1").as_uri() + "#0"
    assert items[3].source == (folder / "data_batch_2").as_uri() + "#0"
    assert [i.label for i in _items(f"{folder}[2:5]")] == ["frog", "automobile", "bird"]
    assert [i.label for i in _items(str(folder / "data_batch_2"), count=1)] == ["automobile"]
    assert all(isinstance(i.image, bytes) and sniff_format(i.image) == "png" for i in items)


def test_source_tiny_images_range(tmp_path: Path) -> None:
    write_tiny_images(tmp_path / "tiny_images.bin", [_rgb(i) for i in range(10)])
    source = open_source(f"{tmp_path / 'tiny_images.bin'}[3:6]")
    assert source.len_hint() == 3
    items = list(source)
    assert [i.source.rsplit("#", 1)[1] for i in items] == ["3", "4", "5"]
    assert items[0].metadata == {"dataset": "tiny-images", "name": "tiny_images.bin#3"}


def test_source_sequence_file_by_magic(tmp_path: Path) -> None:
    records = _png_records(3)
    write_sequence_file(tmp_path / "part-00000", records, compression="block")
    items = _items(str(tmp_path / "part-00000"))
    assert [i.image for i in items] == [r.data for r in records]
    assert items[0].source == (tmp_path / "part-00000").as_uri() + "#photos/img_0000.png"


def test_source_idx_with_matching_labels(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", _rgb(7, (4, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 2, 3, 4], np.uint8))
    items = _items(str(tmp_path / "train-images-idx3-ubyte.gz"), start=1, count=2)
    assert [i.label for i in items] == ["2", "3"]
    fashion = list(sources.fashion_mnist("train", count=2, root=tmp_path))
    assert [i.label for i in fashion] == ["Trouser", "Pullover"]
    assert fashion[0].metadata["dataset"] == "fashion-mnist"


@pytest.mark.skipif(
    not datasets.FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_source_fashion_mnist_by_name() -> None:
    source = open_source("fashion-mnist:test[:5]")
    assert source.len_hint() == 5
    assert [i.label for i in source][:3] == ["Ankle boot", "Pullover", "Trouser"]
    assert open_source("fashion-mnist").len_hint() == 60_000


def test_source_bad_range(tmp_path: Path) -> None:
    write_tiny_images(tmp_path / "t.bin", [_rgb(0)])
    with pytest.raises(DatasetError, match="empty range"):
        open_source(f"{tmp_path / 't.bin'}[5:2]")
