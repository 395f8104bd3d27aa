"""Solr documents, as pure functions: what one tagged image becomes in the index.

``to_solr_doc`` turns one tagged row (a mapping as produced by ``tag_batch``) into a Solr
document of ``solr_config/imagetag/conf/schema.xml``: the image id is the document id, every
class's vote fraction a ``vote_<class>`` field, the model's vector projected onto the
``vector`` field's dimension, the 64-bit pHash also as four 16-bit bands (``phash_b0`` ..
``phash_b3``, for near-duplicate search). No Solr client here (``imagetag.solr`` sends the
documents).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Dimension of the `vector` field in solr_config (Lucene's HNSW limit is 1024). Longer model
# vectors are reduced by a fixed Gaussian random projection (seeded, so every process and every
# model with the same input dimension projects identically; cosine similarity is preserved in
# expectation, Johnson-Lindenstrauss); shorter ones are zero-padded.
VECTOR_DIM = 256
_PROJECTION_SEED = 20261122
_projections: dict[int, np.ndarray] = {}

_SLUG = re.compile(r"[^a-z0-9]+")

# The pHash (16 hex digits, 64 bits) is also indexed as PHASH_BANDS exact 16-bit bands:
# two hashes at most PHASH_BANDS - 1 bits apart share at least one band exactly (pigeonhole),
# so near-duplicates are found by looking up band terms (multi-index hashing, Norouzi et al.)
# instead of comparing against every document.
PHASH_BANDS = 4
_PHASH = re.compile(r"[0-9a-f]{16}")


def phash_band_field(band: int) -> str:
    """Solr field holding band ``band`` (0 = the most significant 16 bits) of the pHash."""
    return f"phash_b{band}"


def phash_bands(phash: str) -> list[str] | None:
    """The four 16-bit bands of a pHash, as 4 hex digits each, most significant first; None
    for anything that is not 16 hex digits."""
    value = phash.strip().lower()
    if not _PHASH.fullmatch(value):
        return None
    width = len(value) // PHASH_BANDS
    return [value[i * width : (i + 1) * width] for i in range(PHASH_BANDS)]


def vote_field(label: str) -> str:
    """Solr field holding the vote fraction of one class: ``vote_<slug>``."""
    return "vote_" + (_SLUG.sub("_", label.lower()).strip("_") or "x")


def project_vector(vector: Sequence[float] | np.ndarray) -> list[float] | None:
    """The model's encoded vector as a VECTOR_DIM vector for Solr's kNN field.

    Returns None for an all-zero vector (cosine similarity is undefined for it).
    """
    values = np.asarray(vector, dtype=np.float32).ravel()
    n = values.shape[0]
    if n == 0:
        return None
    if n <= VECTOR_DIM:
        out = np.zeros(VECTOR_DIM, dtype=np.float32)
        out[:n] = values
    else:
        matrix = _projections.get(n)
        if matrix is None:
            rng = np.random.default_rng(_PROJECTION_SEED + n)
            matrix = (rng.standard_normal((n, VECTOR_DIM)) / np.sqrt(VECTOR_DIM)).astype(np.float32)
            _projections[n] = matrix
        out = values @ matrix
    norm = float(np.linalg.norm(out))
    if norm == 0.0 or not np.isfinite(norm):
        return None
    return [round(float(x), 6) for x in out / norm]


def solr_date(value: Any) -> str | None:
    """A timestamp (datetime, pandas Timestamp, or epoch milliseconds) as Solr's ISO format."""
    if value is None:
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        if np.isnan(float(value)):
            return None
        value = dt.datetime.fromtimestamp(float(value) / 1000.0, tz=dt.UTC)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value


def to_solr_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    """One tagged image (a row of ``tag_batch``'s ``tagged`` frame) as a Solr document."""
    doc: dict[str, Any] = {"id": str(row["id"])}
    for name in ("source", "top_tag", "model_version", "format", "phash", "thumbnail", "label"):
        value = row.get(name)
        if value is not None and value == value:  # skips None and NaN
            doc[name] = str(value)
    for name in ("width", "height", "size"):
        if row.get(name) is not None:
            doc[name] = int(row[name])
    bands = phash_bands(doc["phash"]) if "phash" in doc else None
    for band, value in enumerate(bands or []):
        doc[phash_band_field(band)] = value
    if row.get("confidence") is not None:
        doc["confidence"] = float(row["confidence"])
    doc["tags"] = [str(t) for t in _plain(row.get("tags")) or []]
    colors = _plain(row.get("colors"))
    if colors:
        doc["colors"] = [str(c) for c in colors]
    votes = row.get("votes") or {}
    items = votes.items() if isinstance(votes, Mapping) else votes  # dict or [(k, v), ...]
    for label, fraction in items:
        doc[vote_field(str(label))] = float(fraction)
    for name in ("ingested_at", "tagged_at"):
        stamp = solr_date(row.get(name))
        if stamp:
            doc[name] = stamp
    vector = row.get("vector")
    if vector is not None and len(vector):
        projected = project_vector(vector)
        if projected is not None:
            doc["vector"] = projected
    return doc
