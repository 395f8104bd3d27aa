"""The web app's Solr queries (imagetag.web.queries): escaping of hostile values, the
slider on the selected tags' own votes, the colour palette, pHash bands, URL round trips."""

from __future__ import annotations

import math
import random
import re
from urllib.parse import parse_qs, urlencode

import pytest

from imagetag.documents import phash_bands, to_solr_doc
from imagetag.web import queries
from imagetag.web.queries import QueryError, SearchQuery, phrase, search_request

HOSTILE = [
    '") OR *:*',
    "\\",
    '\\"',
    'a" OR id:* OR "b',
    "{!join from=id to=id}*:*",
    "tag\nfq=*:*",
    "*",
    "x:/.*/",
    '\\\\" OR "',
    "T-shirt/top",
    "Ankle boot",
    "日本語 (tag)",
    "<script>alert(1)</script>",
    "&facet.field=id",
]


def unquote_phrase(text: str) -> str:
    """The value a Solr phrase holds, read as the query parser reads it; fails unless the
    phrase is one whole quoted term."""
    assert text.startswith('"')
    out, i = [], 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            assert i == len(text) - 1, f"the phrase ends early in {text!r}"
            return "".join(out)
        out.append(char)
        i += 1
    raise AssertionError(f"unterminated phrase {text!r}")


def build(query: SearchQuery, classes: tuple[str, ...] = ()) -> queries.SearchRequest:
    return search_request(query, threshold=0.4, page_size=24, max_results=10_000, classes=classes)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_stays_one_phrase(value: str) -> None:
    assert unquote_phrase(phrase(value)) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_tag_is_one_term_of_the_tags_field_and_its_vote_field_a_slug(value: str) -> None:
    query = SearchQuery.from_args({"tag": [value], "min": ["0.7"]})
    request = build(query)
    selection = request.params["fq"][0]
    match = re.fullmatch(
        r"\{!tag=sel\}\(tags:(\".*\") AND (vote_[a-z0-9_]+):\[0\.7000 TO \*\]\)", selection, re.S
    )
    assert match, selection
    assert unquote_phrase(match.group(1)) == value
    [facet] = request.params["facet.query"]
    assert facet.startswith(f"{{!ex=sel key={match.group(2)}}}(tags:")
    assert unquote_phrase(facet[facet.index('"') : facet.rindex('"') + 1]) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filters_are_escaped_too(value: str) -> None:
    query = SearchQuery.from_args({"model": [value], "format": [value], "label": [value]})
    fq = build(query).params["fq"][1:]  # after the (default) confidence filter
    assert len(fq) == 3
    for filt, name in zip(fq, ("model_version", "format", "label"), strict=True):
        assert filt.startswith(f"{name}:")
        assert unquote_phrase(filt[len(name) + 1 :]) == value.strip()


def test_the_slider_filters_on_each_selected_tags_own_vote() -> None:
    query = SearchQuery(tags=("Shirt", "T-shirt/top"), min_confidence=0.65)
    selection = build(query).params["fq"][0]
    assert selection == (
        '{!tag=sel}(tags:"Shirt" AND vote_shirt:[0.6500 TO *]) OR '
        '(tags:"T-shirt/top" AND vote_t_shirt_top:[0.6500 TO *])'
    )
    assert " AND (tags" in build(query.but(match="all")).params["fq"][0]
    # without a tag it is the winning class's confidence; below the threshold it is clamped
    assert build(SearchQuery(min_confidence=0.1)).params["fq"] == [
        "{!tag=sel}confidence:[0.4000 TO *]"
    ]
    assert build(SearchQuery(min_confidence=0.1)).min_confidence == 0.4


def test_facets_count_every_class_at_the_sliders_value_without_the_selection() -> None:
    request = build(SearchQuery(tags=("Bag",), min_confidence=0.8), classes=("Bag", "Sandal"))
    assert request.params["facet.query"] == [
        '{!ex=sel key=vote_bag}(tags:"Bag" AND vote_bag:[0.8000 TO *])',
        '{!ex=sel key=vote_sandal}(tags:"Sandal" AND vote_sandal:[0.8000 TO *])',
    ]
    assert request.facet_keys == {"vote_bag": "Bag", "vote_sandal": "Sandal"}
    assert "{!ex=sel}tags" in request.params["facet.field"]


def test_sort_paging_and_disagreement() -> None:
    request = build(SearchQuery(tags=("Bag",), sort="vote", page=3, disagree=True))
    assert request.params["sort"] == "vote_bag desc, id asc"
    assert request.params["start"] == 48 and request.params["rows"] == 24
    assert "label:[* TO *]" in request.params["fq"]
    assert any("strdist(label,top_tag,edit)" in f for f in request.params["fq"])
    with pytest.raises(QueryError, match="first 10000"):
        build(SearchQuery(page=500))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"min": ["nan"]}, "min"),
        ({"min": ["1.5"]}, "min"),
        ({"min": ["abc"]}, "min"),
        ({"color": ["ff0001"]}, "color"),
        ({"color": ['"/) OR *:*']}, "color"),
        ({"sort": ["id desc"]}, "sort"),
        ({"page": ["0"]}, "page"),
        ({"page": ["-1"]}, "page"),
        ({"match": ["none"]}, "match"),
        ({"tag": ["x" * 201]}, "tag"),
        ({"label": ["x" * 201]}, "label"),
        ({"tag": [str(i) for i in range(21)]}, "tag"),
    ],
)
def test_unusable_parameters_are_refused(args: dict[str, list[str]], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        SearchQuery.from_args(args)


def test_the_url_carries_the_whole_query() -> None:
    query = SearchQuery(
        tags=("Bag", 'a "b"'),
        match="all",
        min_confidence=0.55,
        model_version="v0002",
        format="png",
        color="808080",
        label="Bag",
        disagree=True,
        sort="newest",
        page=2,
    )
    again = SearchQuery.from_args(parse_qs(urlencode(query.url_args())))
    assert again == query
    assert SearchQuery().url_args() == []
    assert query.toggled("Bag").tags == ('a "b"',) and query.toggled("Bag").page == 1


def nearest_level(channel: int) -> int:
    return min((0, 128, 255), key=lambda level: (abs(level - channel), -level))


def test_the_colour_filter_matches_exactly_the_colours_nearest_its_palette_entry() -> None:
    rng = random.Random(0)
    edges = [0x00, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFF]
    samples = [f"#{r:02x}{g:02x}{b:02x}" for r in edges for g in edges for b in edges]
    samples += [f"#{rng.randrange(1 << 24):06x}" for _ in range(300)]
    for entry in queries.PALETTE:
        pattern = queries.color_filter(entry).removeprefix("colors:/").removesuffix("/")
        for color in samples:
            rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
            # a tie (0x40 is as far from 0x00 as from 0x80) goes to the brighter level
            nearest = "".join(f"{nearest_level(c):02x}" for c in rgb)
            assert bool(re.fullmatch(pattern, color)) == (nearest == entry), (entry, color)
            assert queries.nearest_palette_color(color) == nearest
    with pytest.raises(QueryError):
        queries.color_filter("123456")


def test_ids_are_checked_as_hex() -> None:
    good = "ab" * 32
    assert queries.image_request(good)["fq"] == [f'id:"{good}"']
    for bad in ("x", good.upper(), good + "0", '") OR *:*', good[:-1] + '"'):
        with pytest.raises(QueryError):
            queries.image_request(bad)
    with pytest.raises(QueryError):
        queries.ids_request([good, "nope"])


def test_knn_request_excludes_the_image_itself() -> None:
    q, params = queries.knn_request([0.5, -0.25], 3, exclude="cd" * 32)
    assert q == "{!knn f=vector topK=4}[0.500000,-0.250000]"
    assert params["fq"] == [f'-id:"{"cd" * 32}"'] and params["rows"] == 4
    with pytest.raises(QueryError):
        queries.knn_request([float("nan")], 3)


def test_documents_carry_the_phash_bands() -> None:
    doc = to_solr_doc({"id": "ab" * 32, "phash": "0123456789abcdef", "tags": []})
    assert [doc[f"phash_b{i}"] for i in range(4)] == ["0123", "4567", "89ab", "cdef"]
    assert "phash_b0" not in to_solr_doc({"id": "x", "phash": "not a hash", "tags": []})
    assert phash_bands("0123") is None


@pytest.mark.parametrize("distance", [0, 3, 4, 7, 11])
def test_every_hash_within_the_distance_shares_a_queried_band_term(distance: int) -> None:
    rng = random.Random(distance)
    base = f"{rng.getrandbits(64):016x}"
    q, params = queries.near_duplicate_request(base, distance, 500, exclude="ef" * 32)
    terms = {
        (int(band), value)
        for band, body in re.findall(r"phash_b(\d):\(([^)]*)\)", q)
        for value in re.findall(r'"([0-9a-f]{4})"', body)
    }
    radius = distance // 4
    assert len(terms) == 4 * sum(math.comb(16, i) for i in range(radius + 1))
    for _ in range(300):
        bits = rng.sample(range(64), rng.randint(0, distance))
        other = f"{int(base, 16) ^ sum(1 << b for b in bits):016x}"
        assert queries.hamming(base, other) == len(bits)
        bands = phash_bands(other)
        assert bands is not None
        assert any((i, band) in terms for i, band in enumerate(bands))
    assert params["fl"] == "id,phash" and params["rows"] == 500
    with pytest.raises(QueryError):
        queries.near_duplicate_request('") OR *:*', 3, 10)
