"""Real images for the tests and the benches that run the whole pipeline."""

from __future__ import annotations

from typing import Literal

from imagetag.datasets import fashion_mnist_paths, read_idx

FASHION_MNIST_TEST_IMAGES = 10_000


def fashion_images(count: int, start: int = 0) -> list[tuple[bytes, str]]:
    """(PNG bytes, label) of ``count`` Fashion-MNIST images from ``start`` on: from the test
    split when they lie within its 10,000 images, else from the 60,000 of the training split.
    Raises DatasetError when the dataset is not installed."""
    split: Literal["train", "test"] = (
        "test" if start + count <= FASHION_MNIST_TEST_IMAGES else "train"
    )
    records = read_idx(*fashion_mnist_paths(split), start=start, count=count)
    return [(r.data, str(r.label)) for r in records]
