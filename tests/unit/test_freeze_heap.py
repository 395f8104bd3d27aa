"""A Python worker freezes its heap once per model, so PySpark's ``gc.collect()`` after each
task walks only what the task made (``pipeline.freeze_heap``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from imagetag import pipeline


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    pipeline._frozen_for = None
    yield
    gc.unfreeze()
    pipeline._frozen_for = None


class Model:
    """A model whose old version is cyclic garbage once replaced (it points at itself)."""

    def __init__(self) -> None:
        self.me = self
        self.weights = [[i] for i in range(1000)]


@pytest.mark.usefixtures("thawed")
def test_the_heap_is_frozen_once_per_model_and_an_old_model_can_be_collected() -> None:
    first = Model()
    pipeline.freeze_heap(first)
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # the model and everything else alive
    gc.collect()
    assert gc.get_freeze_count() == frozen  # a collection walks and frees none of it
    pipeline.freeze_heap(first)  # every task calls it: nothing more happens
    assert gc.get_freeze_count() == frozen

    found = []
    gc.callbacks.append(lambda phase, info: found.append(info) if phase == "stop" else None)
    try:
        old_id = id(first)
        del first  # a cycle: only a collection frees it, and frozen it never would
        second = Model()
        pipeline.freeze_heap(second)
    finally:
        gc.callbacks.pop()
    assert pipeline._frozen_for == id(second) != old_id
    assert sum(info["collected"] for info in found) >= 1  # the old model went when thawed
    assert gc.get_freeze_count() > 0
