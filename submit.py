"""The one ``spark-submit`` launcher: runs the ``imagetag`` command line.

    spark-submit [options] submit.py backfill SOURCE ...   # = imagetag backfill SOURCE ...
    spark-submit [options] submit.py stream                # = imagetag stream

The jobs are imported as the packages they are (``batch.backfill``, ``streaming.job``, ...),
never run as ``__main__``, so the functions Spark ships to the executors pickle by reference.
"""

from imagetag.cli import main

raise SystemExit(main())
