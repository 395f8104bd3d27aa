"""Helpers shared by the tests and the benches (not used by the pipeline).

- ``corpus``: generated files in odd, unsupported and corrupt formats;
- ``models``: hand-built forests and model bundles, written to a model store;
- ``samples``: Fashion-MNIST images;
- ``services``: isolated topics and collections on a running stack, and readers of them.
"""
