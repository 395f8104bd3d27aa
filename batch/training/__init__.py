"""The training job in parts; ``batch.train`` is its entry point and re-exports the public names.

- ``options``: ``TrainOptions`` and ``TrainError``;
- ``corpus``: the corpus as shards (``plan_corpus``, ``read_shard``);
- ``workers``: the ``mapInPandas`` functions that run in Spark's Python workers;
- ``metrics``: ``classification_metrics``, ``threshold_curve``, ``format_metrics`` and
  ``metrics_plots`` (the bundle's PNGs);
- ``stages``: one function per stage of ``train()``, each returning a small typed result.
"""
