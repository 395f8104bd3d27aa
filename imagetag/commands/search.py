"""``imagetag search [TAG] [--min-confidence C] [--similar-to ID]``: a thin CLI over Solr.

The same queries as plain Solr URLs are in the README.
"""

from __future__ import annotations

import argparse
from typing import Any

from imagetag.errors import ImagetagError, ServiceError
from imagetag.settings import Settings

FIELDS = "id,top_tag,tags,confidence,model_version,label,source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", nargs="?", help="only images tagged with this (default: all)")
    parser.add_argument("--min-confidence", type=float, default=None, metavar="C")
    parser.add_argument("--similar-to", metavar="ID", help="nearest neighbours of this image id")
    parser.add_argument("--rows", type=int, default=10)


def build_query(
    tag: str | None, min_confidence: float | None, vector: list[float] | None, rows: int
) -> tuple[str, dict[str, Any]]:
    """(q, params) for pysolr's search: filters as fq, kNN as the main query."""
    filters = []
    if tag:
        filters.append(f'tags:"{tag}"')
    if min_confidence is not None:
        filters.append(f"confidence:[{min_confidence} TO *]")
    params: dict[str, Any] = {"rows": rows, "fl": FIELDS + ",score", "fq": filters}
    if vector is not None:
        values = ",".join(f"{x:.6f}" for x in vector)
        q = f"{{!knn f=vector topK={rows + 1}}}[{values}]"
        params["rows"] = rows + 1  # the image itself is among its neighbours
    else:
        q = "*:*"
        params["sort"] = "confidence desc, id asc"
    return q, params


def run(args: argparse.Namespace, settings: Settings) -> int:
    import pysolr

    from imagetag.solr import solr_client

    client = solr_client(settings)
    try:
        vector = None
        if args.similar_to:
            found = client.search("*:*", fq=f"id:{args.similar_to}", fl="id,vector", rows=1)
            docs = list(found)
            if not docs or "vector" not in docs[0]:
                raise ImagetagError(f"no indexed image {args.similar_to} with a vector")
            vector = docs[0]["vector"]
        q, params = build_query(args.tag, args.min_confidence, vector, args.rows)
        results = client.search(q, **params)
    except pysolr.SolrError as exc:
        raise ServiceError("solr", settings.solr.url, str(exc).splitlines()[0]) from exc
    rows = [doc for doc in results if doc["id"] != args.similar_to][: args.rows]
    print(f"{results.hits} images match" + (f" (showing {len(rows)})" if rows else ""))
    header = f"{'id':<14} {'top_tag':<14} {'conf':>5} {'score':>6}  {'model':<8} tags"
    print(header)
    print("-" * len(header))
    for doc in rows:
        print(
            f"{doc['id'][:12] + '..':<14} {doc.get('top_tag', ''):<14} "
            f"{doc.get('confidence', 0):>5.2f} {doc.get('score', 0):>6.3f}  "
            f"{doc.get('model_version', ''):<8} {', '.join(doc.get('tags', []))}"
        )
    facets = (results.facets or {}).get("facet_fields", {}).get("tags", [])
    if facets:
        pairs = [f"{facets[i]}={facets[i + 1]}" for i in range(0, len(facets), 2)]
        print("tags: " + "  ".join(pairs))
    return 0
