"""What a training run is parameterised by: ``TrainOptions`` (recorded in the manifest), the
choices it accepts, and ``TrainError``, raised when a corpus cannot be trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagetag.dictionary import NORMALIZATIONS, POOLINGS
from imagetag.errors import ConfigError, ImagetagError, check_minimums
from imagetag.features import FEATURIZERS

# When a trained bundle becomes CURRENT: always (the default), only if it beats CURRENT on the
# held-out split, or never.
PROMOTE_POLICIES = ("always", "if-better", "never")
# The featurizers of imagetag.features' registry, the default first.
DEFAULT_FEATURIZER = "dense-sift"
FEATURIZER_NAMES = (DEFAULT_FEATURIZER, *(n for n in FEATURIZERS if n != DEFAULT_FEATURIZER))


class TrainError(ImagetagError):
    """The corpus cannot be used for training (missing, empty, a single class, ...)."""


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run is parameterised by (recorded in the manifest).

    Raises ConfigError for a value the job cannot use (an unknown featurizer, pooling,
    normalization or promotion policy, a count below its minimum, a fraction outside (0, 1)).
    """

    data: str
    featurizer: str = DEFAULT_FEATURIZER
    featurizer_params: dict[str, Any] = field(default_factory=dict)
    k: int = 256
    levels: int = 2
    neighbors: int = 5  # soft codes over this many words; at most k (the fit caps it)
    pooling: str = "sum"
    normalization: str = "sqrt"
    trees: int = 100
    depth: int = 20
    max_bins: int = 12
    min_instances: int = 3
    subsampling: float = 1.0
    sample_size: int = 100_000  # descriptors for KMeans
    descriptors_per_image: int = 16
    kmeans_iterations: int = 15
    limit: int | None = None  # at most this many records per split
    test_fraction: float = 0.2  # folders and CSVs only
    promote: str = "always"  # always | if-better | never
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data must name a training set (fashion-mnist, a folder, a CSV)")
        for name, allowed in (
            ("featurizer", FEATURIZER_NAMES),
            ("pooling", POOLINGS),
            ("normalization", NORMALIZATIONS),
            ("promote", PROMOTE_POLICIES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        check_minimums(
            self,
            {
                "k": 1,
                "levels": 1,
                "neighbors": 1,
                "trees": 1,
                "depth": 0,
                "max_bins": 2,
                "min_instances": 1,
                "sample_size": 1,
                "descriptors_per_image": 1,
                "kmeans_iterations": 1,
                "limit": 1,
            },
        )
        if self.levels > 4:
            raise ConfigError(f"levels must be 1..4, got {self.levels}")
        if not 0 < self.subsampling <= 1:
            raise ConfigError(f"subsampling must be in (0, 1], got {self.subsampling}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
