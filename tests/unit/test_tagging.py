"""tag_batch on generated images with hand-built models (no Spark, no Kafka)."""

from __future__ import annotations

import base64
import hashlib

import cv2
import numpy as np
import pandas as pd
import pytest

from imagetag import tagging
from imagetag.bundle import ModelBundle
from imagetag.dictionary import VisualDictionary
from imagetag.images import decode_image
from imagetag.settings import ImageLimits
from imagetag.tagging import DEAD_COLUMNS, REVIEW_COLUMNS, TAGGED_COLUMNS, tag_batch
from imagetag.testing.models import hand_built_bundle, leaf, small_featurizer, stump

CLASSES = ["blank", "textured", "other"]


def _png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def _blank() -> bytes:
    return _png(np.full((28, 28), 200, np.uint8))


def _textured(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return _png(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))


def _model(fixed_votes: list[int] | None = None) -> ModelBundle:
    """Dense SIFT + 4 words (word 0 = the zero descriptor of a flat image).

    Default forest: 5 identical stumps on feature 0 (word 0 over the whole image; sqrt(1/2)
    for a blank image, whose counts sit half in level 0 and half in level 1):
    a blank image puts every descriptor on word 0 -> "blank" with 5/5 votes; a noisy one
    -> "textured". ``fixed_votes``: single-leaf trees voting those classes whatever the input.
    """
    rng = np.random.default_rng(0)
    centers = np.vstack([np.zeros(128), rng.random((3, 128)) / 8]).astype(np.float32)
    dictionary = VisualDictionary(centers, levels=2, normalization="sqrt")
    n = len(CLASSES)
    if fixed_votes is None:
        nodes = [node for tree in range(5) for node in stump(tree, 0, 0.5, 1, 0, n)]
    else:
        nodes = [leaf(tree, 0, c, n_classes=n) for tree, c in enumerate(fixed_votes)]
    return hand_built_bundle(small_featurizer(), dictionary, nodes, CLASSES, version="v0007")


def _events(images: list[bytes | None], **extra: list[object]) -> pd.DataFrame:
    n = len(images)
    return pd.DataFrame(
        {
            "id": [hashlib.sha256(b or b"").hexdigest() for b in images],
            "image": images,
            "content_type": ["image/png"] * n,
            "source": [f"file:///img/{i}.png" for i in range(n)],
            "produced_at": [1_700_000_000_000 + i for i in range(n)],
            "label": ["blank" if i % 2 == 0 else None for i in range(n)],
            "metadata": [{"k": "v"}] * n,
            **extra,
        }
    )


def test_every_row_lands_in_exactly_one_output() -> None:
    images = [_blank(), _textured(1), b"not an image at all", _textured(2)[:100], None, b""]
    batch = _events(
        images, topic=["images"] * 6, partition=[0, 1, 0, 1, 0, 1], offset=list(range(6))
    )
    tagged, review, dead = tag_batch(batch, _model(), now_ms=42)
    assert len(tagged) + len(review) + len(dead) == len(batch)
    assert tagged["id"].tolist() == batch["id"][:2].tolist()
    assert tagged["top_tag"].tolist() == ["blank", "textured"]
    assert tagged["confidence"].tolist() == [1.0, 1.0]
    assert tagged["tags"].tolist() == [["blank"], ["textured"]]
    assert review.empty
    assert dead["reason"].tolist() == ["not_an_image", "truncated", "empty", "empty"]
    assert set(dead["stage"]) == {"decode"}
    assert dead["image"].tolist() == [b"not an image at all", images[3], b"", b""]
    assert dead["offset"].tolist() == [2, 3, 4, 5]
    assert list(dead.columns) == [*DEAD_COLUMNS, "topic", "partition", "offset"]


def test_document_fields() -> None:
    data = _textured(5)
    batch = _events([data], timestamp=[pd.Timestamp("2024-01-02T03:04:05Z")])
    tagged, _, _ = tag_batch(batch, _model(), now_ms=1234)
    assert list(tagged.columns) == list(TAGGED_COLUMNS)
    doc = tagged.iloc[0]
    assert (doc["width"], doc["height"], doc["format"], doc["size"]) == (30, 40, "png", len(data))
    assert doc["model_version"] == "v0007"
    assert doc["votes"] == {"blank": 0.0, "textured": 1.0, "other": 0.0}
    assert len(doc["phash"]) == 16 and int(doc["phash"], 16) >= 0
    assert 1 <= len(doc["colors"]) <= 2 and all(c.startswith("#") for c in doc["colors"])
    assert len(doc["vector"]) == 4 * 5
    assert np.linalg.norm(doc["vector"]) == pytest.approx(1.0, rel=1e-5)
    thumb = decode_image(base64.b64decode(doc["thumbnail"]), ImageLimits())
    assert thumb.format == "jpeg" and max(thumb.width, thumb.height) <= 64
    assert doc["label"] == "blank" and doc["source"] == "file:///img/0.png"
    assert doc["produced_at"] == 1_700_000_000_000
    assert doc["ingested_at"] == pd.Timestamp("2024-01-02T03:04:05Z").value // 1_000_000
    assert doc["tagged_at"] == 1234


def test_multi_valued_tags_at_the_threshold() -> None:
    # 2 of 5 trees vote blank, 2 textured, 1 other: 0.4 >= 0.4 -> two tags; ties -> first class.
    tagged, review, _ = tag_batch(_events([_blank()]), _model([0, 1, 1, 0, 2]))
    assert review.empty
    assert tagged.iloc[0]["tags"] == ["blank", "textured"]
    assert tagged.iloc[0]["top_tag"] == "blank"
    assert tagged.iloc[0]["confidence"] == pytest.approx(0.4)


def test_below_threshold_goes_to_review_with_its_bytes() -> None:
    model = _model([0, 1, 1, 0, 2])
    data = _blank()
    tagged, review, dead = tag_batch(
        _events([data], topic=["images"], partition=[0], offset=[9]), model, threshold=0.5
    )
    assert tagged.empty and dead.empty
    assert list(review.columns) == [*REVIEW_COLUMNS, "topic", "partition", "offset"]
    row = review.iloc[0]
    assert row["tags"] == [] and row["top_tag"] == "blank"
    assert row["confidence"] == pytest.approx(0.4)
    assert row["image"] == data and row["metadata"] == {"k": "v"}
    assert row["offset"] == 9


def test_limits_are_enforced() -> None:
    _, _, dead = tag_batch(_events([_textured()]), _model(), limits=ImageLimits(max_pixels=100))
    assert dead.iloc[0]["reason"] == "too_many_pixels"


def test_empty_batch() -> None:
    tagged, review, dead = tag_batch(_events([]), _model())
    assert (len(tagged), len(review), len(dead)) == (0, 0, 0)
    assert list(tagged.columns) == list(TAGGED_COLUMNS)
    assert list(dead.columns) == list(DEAD_COLUMNS)


def test_chunks_of_rows_give_the_outcomes_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CHUNK_ROWS`` at a time: the same rows, in the same order, as the whole batch at once,
    and a bad record in any chunk dead alone, never classified."""
    images: list[bytes | None] = [_blank() if i % 3 else _textured(i) for i in range(10)]
    images[4], images[8] = b"not an image at all", _textured(3)[:100]
    batch = _events(images, topic=["images"] * 10, partition=[0] * 10, offset=list(range(10)))
    monkeypatch.setattr(tagging, "CHUNK_ROWS", 10_000)
    whole = tag_batch(batch, _model(), now_ms=42)
    monkeypatch.setattr(tagging, "CHUNK_ROWS", 3)
    passes: list[int] = []
    vectorised = tagging._vectorised

    def counted(model: ModelBundle, items: list[tagging._Decoded]) -> list[tagging._Classified]:
        passes.append(len(items))
        return vectorised(model, items)

    monkeypatch.setattr(tagging, "_vectorised", counted)
    chunked = tag_batch(batch, _model(), now_ms=42)
    for one, other in zip(whole, chunked, strict=True):
        pd.testing.assert_frame_equal(one, other)
    assert chunked[2]["offset"].tolist() == [4, 8]
    assert passes == [3, 2, 2, 1]  # 3 rows a chunk, the dead ones never classified
