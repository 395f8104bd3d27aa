from __future__ import annotations

from imagetag.commands.search import build_query


def test_tag_and_confidence_become_filters_sorted_by_confidence() -> None:
    q, params = build_query("Bag", 0.7, None, 5)
    assert q == "*:*"
    assert params["fq"] == ['tags:"Bag"', "confidence:[0.7 TO *]"]
    assert params["sort"].startswith("confidence desc") and params["rows"] == 5


def test_similar_is_a_knn_query_with_room_for_the_image_itself() -> None:
    q, params = build_query(None, None, [0.5, 0.25], 3)
    assert q == "{!knn f=vector topK=4}[0.500000,0.250000]"
    assert params["rows"] == 4 and params["fq"] == [] and "sort" not in params
