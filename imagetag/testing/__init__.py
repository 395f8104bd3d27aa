"""Helpers shared by the tests and the benches (not used by the pipeline)."""
