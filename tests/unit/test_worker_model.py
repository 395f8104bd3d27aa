"""A Python worker unpickles a model once and freezes its heap then, so PySpark's
``gc.collect()`` after each task walks only what the task made (``pipeline.worker_model``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from imagetag import pipeline
from imagetag.pipeline import SharedModel


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    pipeline._worker_model = None
    yield
    gc.unfreeze()
    pipeline._worker_model = None


class Model:
    """A model whose old version is cyclic garbage once replaced (it points at itself)."""

    def __init__(self) -> None:
        self.me = self
        self.weights = [[i] for i in range(1000)]


class Broadcast:
    """What a worker holds for a broadcast: ``value`` unpickles (here: builds) the model."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.reads = 0

    @property
    def value(self) -> Any:
        self.reads += 1
        return self.model


def shared(key: str, model: Model) -> tuple[SharedModel, Broadcast]:
    broadcast = Broadcast(model)
    return SharedModel(key, broadcast), broadcast  # type: ignore[arg-type]


def frozen(*objects: Any) -> bool:
    """Whether every one of ``objects`` is in the permanent generation: a collection's
    ``gc.get_objects()`` lists the three generations it walks, not the frozen objects. (The
    freeze count is no measure: a frozen object that garbage of other tests held last is freed
    by any collection, and the count drops.)"""
    walked = {id(o) for o in gc.get_objects()}
    return not any(id(o) in walked for o in objects)


@pytest.mark.usefixtures("thawed")
def test_a_model_is_read_once_per_key_even_when_spark_sends_its_broadcast_again() -> None:
    first, sent = shared("k1", Model())
    model = pipeline.worker_model(first)
    assert gc.get_freeze_count() > 1000  # the model and everything else alive
    gc.collect()
    assert frozen(model, model.weights, model.weights[-1])  # a collection does not walk it
    assert pipeline.worker_model(first) is model  # every task calls it: nothing more happens
    # After a task without it, Spark sends the broadcast again: a new object, the same key.
    again, resent = shared("k1", Model())
    assert pipeline.worker_model(again) is model
    assert (sent.reads, resent.reads) == (1, 0)
    assert frozen(model, model.weights)  # not thawed either


@pytest.mark.usefixtures("thawed")
def test_a_new_key_thaws_the_heap_so_the_old_model_can_be_collected() -> None:
    first, _ = shared("k1", Model())
    old_id = id(pipeline.worker_model(first))
    found = []
    gc.callbacks.append(lambda phase, info: found.append(info) if phase == "stop" else None)
    try:
        del first  # the model is a cycle: only a collection frees it, and frozen it never would
        second, sent = shared("k2", Model())
        model = pipeline.worker_model(second)
    finally:
        gc.callbacks.pop()
    assert id(model) != old_id and sent.reads == 1
    assert pipeline._worker_model == ("k2", model)
    assert sum(info["collected"] for info in found) >= 1  # the old model went when thawed
    assert gc.get_freeze_count() > 0
