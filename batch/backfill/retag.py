"""Re-tagging: the ids to re-tag (Solr documents of an older model, paged with
``cursorMark``; review-topic records) and removing from Solr the documents a re-tag sent
to review or the dead-letter topic. Executor-side bodies, run by ``Backfill``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from imagetag.settings import Settings

if TYPE_CHECKING:
    import pandas as pd


def solr_ids_partition(settings_json: str, current: str, page: int = 10_000) -> Iterator[str]:
    """Ids of the Solr documents whose ``model_version`` is not ``current`` (cursorMark paging).

    Runs on one executor so that millions of ids never pass through the driver."""
    from imagetag.solr import solr_client

    settings = Settings.from_executors(settings_json)
    client = solr_client(settings)
    cursor = "*"
    escaped = current.replace("\\", "\\\\").replace('"', '\\"')
    while True:
        result = client.search(
            "*:*",
            fq=f'-model_version:"{escaped}"',
            fl="id",
            sort="id asc",
            rows=page,
            cursorMark=cursor,
        )
        for doc in result.docs:
            yield str(doc["id"])
        if not result.nextCursorMark or result.nextCursorMark == cursor:
            return
        cursor = result.nextCursorMark


def review_ids_frame(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: review-topic records (value = TagResult) -> (id, model_version)."""
    import pandas as pd

    from imagetag.avro import AvroDeserializer
    from imagetag.errors import RecordError

    deserialize = AvroDeserializer("TagResult")
    for frame in batches:
        out = []
        for value in frame["value"]:
            try:
                result = deserialize(value)
            except RecordError:
                continue  # not a TagResult: nothing to re-tag
            out.append((str(result["id"]), str(result.get("model_version") or "")))
        yield pd.DataFrame(out, columns=["id", "model_version"])


def solr_delete_partition(settings_json: str) -> Callable[[Iterable[Any]], Iterator[int]]:
    """mapPartitions body: remove documents by id (images a re-tag sent to review / DLQ)."""

    def delete(rows: Iterable[Any]) -> Iterator[int]:
        from imagetag.solr import solr_client

        ids = [row.id for row in rows if row.id]
        if not ids:
            return
        client = solr_client(Settings.from_executors(settings_json))
        for i in range(0, len(ids), 500):
            client.delete(id=ids[i : i + 500], commit=False)
        yield len(ids)

    return delete
