"""Backfill: tag a historical corpus with Spark, through the stream's own code path.

    imagetag backfill SOURCE [--since DATE] [--retag older|review|all] [...]
    imagetag submit backfill SOURCE [...]        # through spark-submit, on spark.master

``run(settings, BackfillOptions(...))`` is the job (``imagetag.commands.backfill`` turns the
command line into the options); ``run_backfill`` runs it in a Spark session the caller owns.

SOURCE is read with Spark into *Kafka-shaped rows* (``key`` = image id, ``value`` = an Avro
ImageEvent, ``topic``/``partition``/``offset`` = where the record came from, ``timestamp`` =
its ingest time), so ``imagetag.pipeline.tag_rows`` and ``write_outputs`` — what the stream's
``foreachBatch`` calls — tag and write them unchanged: Solr upserts, the review topic, the
dead-letter topic. A round that fails deterministically is narrowed down and its poison
records are dead-lettered (``poison``); the backfill goes on and counts them. ImageEvents are built on the executors (``mapInPandas``); the id is the
sha256 of the bytes, so a re-done record upserts the same Solr document.

Sources (``--format`` or sniffed):

- ``archive``: the raw archive the stream writes (Parquet under ``archive_dir`` partitioned
  by ``ingest_date``; ``--since DATE`` keeps ``ingest_date >= DATE``), plus what earlier
  backfills archived under ``archive_dir/_backfill``;
- a folder tree, read with Spark's ``binaryFile`` source (recursive, ``--glob`` is its
  ``pathGlobFilter``), ``--label-from folder`` labels with the parent folder's name;
- Parquet with a bytes column (``--bytes-column``, optional ``--label-column``);
- Hadoop SequenceFile(s) of (Text filename, BytesWritable bytes), one split per file;
- CIFAR-10/100 python batches and Tiny Images ``.bin`` files, split into record ranges read on
  the executors (they need the path on a filesystem every executor mounts);
- ``kafka[:TOPIC]``: a topic (default ``kafka.topic_images``) from its earliest offset to its
  current end, with Spark's batch Kafka source.

Splits and rounds. The driver plans *splits* from metadata only (file listings, file sizes,
record counts, Kafka watermarks); each split is one unit of progress. Splits are processed in
*rounds* of ``--splits-per-round`` (default: Spark's default parallelism), one Spark job per
round, so memory stays flat however large the corpus: nothing but per-round counts comes back
to the driver. Images from external sources are also appended to the archive
(``archive_dir/_backfill``, one partition per split, overwritten when a split is re-done) so a
later ``--retag`` or ``imagetag reindex`` finds their bytes.

Resuming. Each finished split leaves a progress record ``done/<split>.json`` in the state
folder (``--state``, default ``<checkpoint_dir>/backfill/<hash of the source and options>``); a
restarted backfill skips finished splits. Solr writes are idempotent (ids are content hashes);
the review / dead-letter records of a round go out in one Kafka transaction with a ledger entry
naming its splits (``imagetag.sinks``), so a round re-done after a crash does not append them
twice, and a round killed half-way leaves nothing a read_committed consumer sees.

Re-tagging. ``--retag older`` re-tags archived images whose Solr document has a
``model_version`` other than ``CURRENT`` (ids paged from Solr with ``cursorMark``);
``--retag review`` those in the review topic not yet re-tagged by ``CURRENT``; ``--retag all``
both. The ids are collected once per run into the state folder (on an executor, never on the
driver), the archive is semi-joined with them, and an image the new model leaves undecided
(review) or cannot decode (dead) is also removed from Solr, so no document keeps an old
model's tags.

Layout: ``options`` (options, splits, summary, the error), ``planning`` (sniffing and planning
splits from metadata), ``readers`` (executor side: records -> Kafka-shaped rows), ``retag``
(the ids to re-tag, Solr deletes), ``state`` (the state folder, ledger tokens), ``job`` (the
``Backfill`` run, ``run`` and ``run_backfill``). This package exports the job's API (the
options, the summary, the entry points); the parts are imported from their modules.
"""

from batch.backfill.job import Backfill, run, run_backfill
from batch.backfill.options import (
    DEFAULT_SPLIT_BYTES,
    DEFAULT_SPLIT_RECORDS,
    KINDS,
    RETAG_MODES,
    BackfillError,
    BackfillOptions,
    BackfillSummary,
    Split,
)

__all__ = [
    "DEFAULT_SPLIT_BYTES",
    "DEFAULT_SPLIT_RECORDS",
    "KINDS",
    "RETAG_MODES",
    "Backfill",
    "BackfillError",
    "BackfillOptions",
    "BackfillSummary",
    "Split",
    "run",
    "run_backfill",
]
