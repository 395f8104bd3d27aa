"""Every Solr query the web app sends, built in one place, with every value escaped.

Pure functions and types (no Solr client, no Flask): a page turns its URL into a
:class:`SearchQuery` (:meth:`SearchQuery.from_args`, which refuses what it cannot use with a
:class:`QueryError`), and the builders here turn that, an image id, a vector or a pHash into
the parameters of one ``/select`` request.

Escaping: a user's value only ever reaches Solr inside a phrase, ``field:"..."``, with ``\\``
and ``"`` backslash-escaped (:func:`phrase`), so it is one term of one field whatever it holds
(``") OR *:*``, ``{!join ...}``, newlines); field names come from our own slugs
(:func:`imagetag.documents.vote_field`), colours from a fixed palette, ids and pHashes are
checked as hex, numbers are formatted by us. Nothing else is interpolated.

The confidence slider filters on the *selected tags' own* vote fractions (``vote_<class>``),
not on the winning class's: "Shirt at 0.6 or more" finds the images where 60% of the trees
said Shirt, whatever won. Without a selected tag it filters on ``confidence`` (the winning
class's fraction). The tag facets count, per class, the images at the slider's value with
every other filter applied (``facet.query`` per class, excluding the tag filter itself), so the
counts beside the check boxes say what ticking one would give.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from imagetag.documents import PHASH_BANDS, phash_band_field, phash_bands, vote_field

# Stored fields a result tile needs (the vote fields so a tile can show the selected tag's).
TILE_FIELDS = "id,top_tag,tags,confidence,label,thumbnail,vote_*"
# Everything an image page shows (the vector is read for the kNN query).
IMAGE_FIELDS = "*"
# The tag filter's (and the slider's) name in Solr's tag/exclude local parameters.
SELECTION_TAG = "sel"
MAX_VALUE_CHARS = 200
MAX_TAGS = 20

_HEX_ID = re.compile(r"[0-9a-f]{64}")
_HEX6 = re.compile(r"[0-9a-f]{6}")


class QueryError(ValueError):
    """A URL parameter the app cannot turn into a query (the page says which and why)."""


def phrase(value: str) -> str:
    """``value`` as a Solr phrase: in double quotes, ``\\`` and ``"`` backslash-escaped, so
    the query parser reads exactly one term whatever ``value`` holds."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def term(field_name: str, value: str) -> str:
    """``field:"value"`` (a term query on a string field), ``value`` escaped."""
    return f"{field_name}:{phrase(value)}"


def number(value: float) -> str:
    """A float as Solr reads it (never ``nan`` or ``inf``, which the parser refuses)."""
    if not math.isfinite(value):
        raise QueryError(f"not a finite number: {value}")
    return f"{value:.4f}"


# -- the colour palette ----------------------------------------------------------------------

# Three levels per channel: 27 colours. Nearest-of-palette (Euclidean in RGB) then decomposes
# into the nearest level per channel, whose cells are hex-aligned ranges: 00-3f -> 00,
# 40-bf -> 80, c0-ff -> ff. So "a dominant colour nearest X" is a regular expression over
# the stored "#rrggbb" strings, with no field added to the index.
LEVELS: tuple[tuple[str, str], ...] = (("00", "[0-3]"), ("80", "[4-9a-b]"), ("ff", "[c-f]"))
PALETTE: tuple[str, ...] = tuple(r + g + b for r, _ in LEVELS for g, _ in LEVELS for b, _ in LEVELS)
_LEVEL_CLASS = dict(LEVELS)
COLOR_NAMES: dict[str, str] = {
    "000000": "black",
    "808080": "grey",
    "ffffff": "white",
    "ff0000": "red",
    "00ff00": "green",
    "0000ff": "blue",
    "ffff00": "yellow",
    "00ffff": "cyan",
    "ff00ff": "magenta",
    "ff8000": "orange",
    "800080": "purple",
    "800000": "maroon",
    "008000": "dark green",
    "000080": "navy",
    "808000": "olive",
    "008080": "teal",
}


def nearest_palette_color(hex_color: str) -> str | None:
    """The palette entry nearest ``#rrggbb`` (per-channel nearest level), None if not a
    colour."""
    value = hex_color.lstrip("#").lower()
    if not _HEX6.fullmatch(value):
        return None
    out = ""
    for i in range(3):
        channel = int(value[2 * i : 2 * i + 2], 16)
        out += "00" if channel < 0x40 else "80" if channel < 0xC0 else "ff"
    return out


def color_filter(palette_color: str) -> str:
    """The filter "one of the image's dominant colours (``colors``) is nearest
    ``palette_color``": a regular expression on the stored ``#rrggbb`` values. Raises
    QueryError for a colour not in :data:`PALETTE`."""
    if palette_color not in PALETTE:
        raise QueryError(f"not a colour of the palette: {palette_color!r}")
    channels = [_LEVEL_CLASS[palette_color[i : i + 2]] for i in (0, 2, 4)]
    return "colors:/." + "".join(c + "[0-9a-f]" for c in channels) + "/"


# -- the search page -------------------------------------------------------------------------

SORTS: dict[str, tuple[str, str]] = {
    # name -> (label, Solr sort); "vote" sorts on the first selected tag's vote fraction
    "confidence": ("confidence (high first)", "confidence desc"),
    "vote": ("vote for the selected tag", ""),
    "low": ("confidence (low first)", "confidence asc"),
    "newest": ("newest first", "ingested_at desc"),
    "oldest": ("oldest first", "ingested_at asc"),
    "largest": ("largest file first", "size desc"),
}


@dataclass(frozen=True)
class SearchQuery:
    """What the search page's URL asks for. ``min_confidence`` None means the threshold."""

    tags: tuple[str, ...] = ()
    match: Literal["any", "all"] = "any"
    min_confidence: float | None = None
    model_version: str | None = None
    format: str | None = None
    color: str | None = None
    label: str | None = None
    disagree: bool = False
    sort: str = "confidence"
    page: int = 1

    @classmethod
    def from_args(cls, args: Mapping[str, Sequence[str]]) -> SearchQuery:
        """From URL parameters (name -> every value given; ``tag`` may repeat). Empty values
        count as absent. Raises QueryError for a value that cannot be used."""

        def one(name: str) -> str | None:
            values = [v for v in args.get(name, []) if v.strip()]
            if not values:
                return None
            if len(values[-1]) > MAX_VALUE_CHARS:
                raise QueryError(f"{name}: longer than {MAX_VALUE_CHARS} characters")
            return values[-1].strip()

        tags = tuple(dict.fromkeys(t.strip() for t in args.get("tag", []) if t.strip()))
        if len(tags) > MAX_TAGS:
            raise QueryError(f"tag: at most {MAX_TAGS} tags")
        if any(len(t) > MAX_VALUE_CHARS for t in tags):
            raise QueryError(f"tag: longer than {MAX_VALUE_CHARS} characters")
        match = one("match") or "any"
        if match not in ("any", "all"):
            raise QueryError("match: any or all")
        confidence = None
        if (text := one("min")) is not None:
            try:
                confidence = float(text)
            except ValueError as exc:
                raise QueryError(f"min: not a number: {text!r}") from exc
            if not math.isfinite(confidence) or not 0.0 <= confidence <= 1.0:
                raise QueryError("min: a number from 0 to 1")
        color = one("color")
        if color is not None:
            color = color.lstrip("#").lower()
            if color not in PALETTE:
                raise QueryError(f"color: not a colour of the palette: {color!r}")
        sort = one("sort") or "confidence"
        if sort not in SORTS:
            raise QueryError(f"sort: one of {', '.join(SORTS)}")
        page_text = one("page") or "1"
        if not page_text.isdigit() or not 1 <= int(page_text) <= 1_000_000:
            raise QueryError("page: a positive whole number")
        return cls(
            tags=tags,
            match="all" if match == "all" else "any",
            min_confidence=confidence,
            model_version=one("model"),
            format=one("format"),
            color=color,
            label=one("label"),
            disagree=(one("disagree") or "") in ("1", "on", "true"),
            sort=sort,
            page=int(page_text),
        )

    def url_args(self) -> list[tuple[str, str]]:
        """The URL parameters that give back this query (only what differs from the
        defaults, so a shared link stays short)."""
        out = [("tag", t) for t in self.tags]
        if self.match != "any":
            out.append(("match", self.match))
        if self.min_confidence is not None:
            out.append(("min", f"{self.min_confidence:.2f}"))
        for name, value in (
            ("model", self.model_version),
            ("format", self.format),
            ("color", self.color),
            ("label", self.label),
        ):
            if value is not None:
                out.append((name, value))
        if self.disagree:
            out.append(("disagree", "1"))
        if self.sort != "confidence":
            out.append(("sort", self.sort))
        if self.page != 1:
            out.append(("page", str(self.page)))
        return out

    def but(self, **changes: Any) -> SearchQuery:
        """A copy with some fields changed, back on page 1 unless ``page`` is given."""
        return replace(self, **({"page": 1} | changes))

    def toggled(self, tag: str) -> SearchQuery:
        """This query with ``tag`` selected, or deselected when it was."""
        tags = tuple(t for t in self.tags if t != tag) if tag in self.tags else (*self.tags, tag)
        return self.but(tags=tags)


@dataclass(frozen=True)
class SearchRequest:
    """The ``/select`` parameters of a search page, and what is needed to read the answer."""

    params: dict[str, Any]
    min_confidence: float
    facet_keys: dict[str, str] = field(default_factory=dict)  # facet.query key -> class


def selection_filter(query: SearchQuery, min_confidence: float) -> str | None:
    """The tag + slider filter: each selected tag with its own vote fraction at least
    ``min_confidence`` (any or all of them), or the winning class's confidence when no tag is
    selected. None when it would filter nothing."""
    low = number(min_confidence)
    if not query.tags:
        return f"confidence:[{low} TO *]" if min_confidence > 0 else None
    clauses = [f"({term('tags', t)} AND {vote_field(t)}:[{low} TO *])" for t in query.tags]
    return (" AND " if query.match == "all" else " OR ").join(clauses)


def search_request(
    query: SearchQuery,
    *,
    threshold: float,
    page_size: int,
    max_results: int,
    classes: Sequence[str] = (),
) -> SearchRequest:
    """The ``/select`` parameters of ``query``: filters as ``fq`` (the selection tagged, so
    the facets can leave it out), one page of tiles, facets on tags (per class at the slider's
    value: ``classes`` and the selected tags), model versions, formats and labels.

    The slider's value is clamped to [``threshold``, 1]: below the threshold no tag was kept.
    Raises QueryError for a page beyond ``max_results``."""
    low = min(1.0, max(threshold, query.min_confidence or threshold))
    start = (query.page - 1) * page_size
    if start >= max_results:
        raise QueryError(f"page: only the first {max_results} results are paged to")
    filters = []
    selection = selection_filter(query, low)
    if selection is not None:
        filters.append(f"{{!tag={SELECTION_TAG}}}{selection}")
    for name, value in (
        ("model_version", query.model_version),
        ("format", query.format),
        ("label", query.label),
    ):
        if value is not None:
            filters.append(term(name, value))
    if query.color is not None:
        filters.append(color_filter(query.color))
    if query.disagree:
        filters.append("label:[* TO *]")
        # strdist(..., edit) is 1 exactly when the two strings are equal
        filters.append("{!frange l=0 u=1 incu=false}strdist(label,top_tag,edit)")
    sort = SORTS[query.sort][1]
    if query.sort == "vote":
        sort = f"{vote_field(query.tags[0])} desc" if query.tags else "confidence desc"
    facet_keys: dict[str, str] = {}
    facet_queries = []
    for label in dict.fromkeys([*classes, *query.tags]):
        key = vote_field(label)
        if key in facet_keys:  # two classes with one slug: count them under the first
            continue
        facet_keys[key] = label
        facet_queries.append(
            f"{{!ex={SELECTION_TAG} key={key}}}({term('tags', label)} AND {key}:[{number(low)} TO *])"
        )
    params: dict[str, Any] = {
        "fq": filters,
        "fl": TILE_FIELDS,
        "sort": f"{sort}, id asc",
        "start": start,
        "rows": page_size,
        "facet": "true",
        "facet.mincount": 1,
        "facet.limit": 100,
        "facet.field": [
            f"{{!ex={SELECTION_TAG}}}tags",
            "model_version",
            "format",
            "label",
        ],
        "facet.query": facet_queries,
    }
    return SearchRequest(params, low, facet_keys)


# -- one image, its neighbours -----------------------------------------------------------------


def check_id(image_id: str) -> str:
    """An image id (sha256, 64 lowercase hex digits); raises QueryError for anything else."""
    if not _HEX_ID.fullmatch(image_id):
        raise QueryError("an image id is 64 hexadecimal digits")
    return image_id


def image_request(image_id: str) -> dict[str, Any]:
    """The parameters that fetch one document, every stored field."""
    return {"fq": [term("id", check_id(image_id))], "fl": IMAGE_FIELDS, "rows": 1}


def knn_request(
    vector: Sequence[float], k: int, exclude: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(q, params) of the ``k`` nearest documents to ``vector`` (Solr kNN on ``vector``),
    ``exclude`` (an image id) left out."""
    values = ",".join(number_vector(x) for x in vector)
    params: dict[str, Any] = {"fl": "id,top_tag,tags,confidence,label,thumbnail,score"}
    top = k + (1 if exclude else 0)
    params["rows"] = top
    if exclude is not None:
        params["fq"] = [f"-{term('id', check_id(exclude))}"]
    return f"{{!knn f=vector topK={top}}}[{values}]", params


def number_vector(value: float) -> str:
    """One vector component (finite, 6 decimals)."""
    if not math.isfinite(float(value)):
        raise QueryError("a vector component is not a finite number")
    return f"{float(value):.6f}"


def band_neighbours(band: str, radius: int) -> list[str]:
    """Every 16-bit value (4 hex digits) at most ``radius`` bits from ``band``, ``band``
    first."""
    from itertools import combinations

    value = int(band, 16)
    bits = 4 * len(band)
    out = [band]
    for flips in range(1, radius + 1):
        for positions in combinations(range(bits), flips):
            mask = sum(1 << p for p in positions)
            out.append(f"{value ^ mask:0{len(band)}x}")
    return out


def near_duplicate_request(
    phash: str, distance: int, candidates: int, exclude: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(q, params) of the candidates for pHashes at most ``distance`` bits from ``phash``.

    Multi-index hashing: with the 64 bits cut into 4 bands, two hashes at most ``distance``
    bits apart have a band at most ``distance // 4`` bits apart (pigeonhole), so the query
    asks for documents having, in some band, a value within that radius of ours (one term for
    distances up to 3, 17 per band up to 7, 137 up to 11). Solr answers from its inverted
    index, without looking at the other documents; the app then verifies the full Hamming
    distance of each candidate (:func:`hamming`). At most ``candidates`` are fetched (only
    ``id`` and ``phash``). Raises QueryError for a malformed pHash."""
    bands = phash_bands(phash)
    if bands is None:
        raise QueryError(f"not a 64-bit pHash: {phash!r}")
    radius = distance // PHASH_BANDS
    clauses = []
    for i, band in enumerate(bands):
        values = " OR ".join(phrase(v) for v in band_neighbours(band, radius))
        clauses.append(f"{phash_band_field(i)}:({values})")
    params: dict[str, Any] = {"fl": "id,phash", "rows": candidates, "sort": "id asc"}
    if exclude is not None:
        params["fq"] = [f"-{term('id', check_id(exclude))}"]
    return " OR ".join(clauses), params


def hamming(a: str, b: str) -> int:
    """Bits that differ between two 16-hex-digit pHashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def ids_request(ids: Sequence[str]) -> dict[str, Any]:
    """The tiles of the documents ``ids`` (checked as ids)."""
    clause = " OR ".join(phrase(check_id(i)) for i in ids) or '""'
    return {
        "fq": [f"id:({clause})"],
        "fl": "id,top_tag,tags,confidence,label,thumbnail,phash",
        "rows": max(1, len(ids)),
    }
