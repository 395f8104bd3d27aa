"""The model store: versioned model bundles and the ``CURRENT`` pointer.

Layout of a store (a local folder or any Hadoop filesystem URI Spark can write)::

    <store>/CURRENT                       "v0003\\n" - switched atomically on promotion
    <store>/v0003/manifest.json           written last: a version without it is incomplete
    <store>/v0003/dictionary/             centers.npy + dictionary.json (VisualDictionary)
    <store>/v0003/forest/                 forest.npz + forest.json (the compiled Forest)
    <store>/v0003/spark/kmeans/           the Spark KMeansModel, as Spark saves it
    <store>/v0003/spark/forest/           the Spark RandomForestClassificationModel
    <store>/v0003/confusion.png           plots of the held-out evaluation, written by training
    <store>/v0003/threshold.png           (``ModelStore.write(bundle, files=...)``); optional

A local store needs no Spark at all (the streaming hot path loads bundles with numpy only).
Other URIs (``hdfs://``, ``s3a://``, ...) go through Hadoop's ``FileSystem`` in the JVM of an
active Spark session; bundles are then copied to a local cache folder before loading.

``CURRENT`` is replaced atomically: written to a temporary name in the same folder, then
renamed over the old one (``os.replace`` locally; ``FileContext.rename(OVERWRITE)`` on
Hadoop, atomic on HDFS). Readers therefore see the old or the new version, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imagetag.dictionary import VisualDictionary
from imagetag.errors import ImagetagError
from imagetag.features import Featurizer, get_featurizer
from imagetag.forest import Forest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
DICTIONARY_DIR = "dictionary"
FOREST_DIR = "forest"
SPARK_KMEANS_DIR = "spark/kmeans"
SPARK_FOREST_DIR = "spark/forest"
CONFUSION_PLOT = "confusion.png"  # the confusion matrix on the held-out split
THRESHOLD_PLOT = "threshold.png"  # precision and coverage against the vote threshold
BUNDLE_FORMAT = 1
_VERSION = re.compile(r"^v(\d{4,})$")


class BundleError(ImagetagError):
    """A model store or bundle that cannot be read or written (missing, incomplete, no Spark)."""


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """Everything tagging needs: featurizer, dictionary, compiled forest, and the manifest."""

    version: str
    manifest: dict[str, Any] = field(repr=False)
    featurizer: Featurizer
    dictionary: VisualDictionary
    forest: Forest

    @property
    def classes(self) -> list[str]:
        return self.forest.classes

    @property
    def vote_threshold(self) -> float:
        """The threshold the bundle was evaluated at (tagging may override it)."""
        return float(self.manifest.get("vote_threshold", 0.40))

    @property
    def color_k(self) -> int:
        """The fixed per-image k for dominant colours (chosen by silhouette at training)."""
        return int(self.manifest.get("color_k", 4))

    def save(self, folder: str | Path) -> None:
        """Write the numpy parts and the manifest into a local ``folder``."""
        folder = Path(folder)
        self.dictionary.save(folder / DICTIONARY_DIR)
        self.forest.save(folder / FOREST_DIR)
        (folder / MANIFEST).write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        """Read a bundle from a local ``folder`` (numpy only, no Spark)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{folder}: no {MANIFEST} (incomplete bundle?)") from exc
        spec = manifest["featurizer"]
        try:
            return cls(
                version=manifest["version"],
                manifest=manifest,
                featurizer=get_featurizer(spec["name"], **spec.get("params", {})),
                dictionary=VisualDictionary.load(folder / DICTIONARY_DIR),
                forest=Forest.load(folder / FOREST_DIR),
            )
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{folder}: cannot load the bundle: {exc}") from exc


def build_manifest(
    version: str,
    featurizer: Featurizer,
    dictionary: VisualDictionary,
    forest: Forest,
    *,
    trees: int,
    depth: int,
    data: dict[str, Any],
    metrics: dict[str, Any],
    vote_threshold: float,
    color_k: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle: what was trained, on what, and how well it did."""
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "featurizer": {"name": featurizer.name, "params": featurizer.params},
        "k": dictionary.k,
        "pooling": dictionary.pooling,
        "normalization": dictionary.normalization,
        "pyramid_levels": dictionary.levels,
        "soft_neighbors": dictionary.neighbors,
        "vector_dim": dictionary.dim,
        "trees": trees,
        "depth": depth,
        "forest": {
            "nodes": forest.n_nodes,
            "max_depth_reached": forest.max_depth,
            "features": forest.n_features,
        },
        "classes": forest.classes,
        "color_k": color_k,
        "vote_threshold": vote_threshold,
        "data": data,
        "metrics": metrics,
        "files": {
            "dictionary": DICTIONARY_DIR,
            "forest": FOREST_DIR,
            "spark_kmeans": SPARK_KMEANS_DIR,
            "spark_forest": SPARK_FOREST_DIR,
        },
    }
    if extra:
        manifest.update(extra)
    return manifest


# -- filesystems ---------------------------------------------------------------------------------


def is_local(uri: str) -> bool:
    """True for plain paths and ``file:`` URIs."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme == "file" else Path(uri)


class _LocalFS:
    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def exists(self, *parts: str) -> bool:
        return self.root.joinpath(*parts).exists()

    def list_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir()]

    def read_text(self, *parts: str) -> str:
        return self.root.joinpath(*parts).read_text()

    def make_version_dir(self, name: str) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            (self.root / name).mkdir()  # atomic: exactly one trainer gets a given version
        except FileExistsError:
            return False
        return True

    def upload(self, local_folder: Path, *parts: str) -> None:
        target = self.root.joinpath(*parts)
        for source in sorted(local_folder.rglob("*")):
            if source.is_file() and source.name != MANIFEST:
                dest = target / source.relative_to(local_folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
        manifest = local_folder / MANIFEST
        if manifest.exists():  # last: its presence marks the bundle complete
            shutil.copyfile(manifest, target / MANIFEST)

    def local_copy(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def replace_text(self, text: str, *parts: str) -> None:
        target = self.root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with open(temp, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)


class _HadoopFS:
    """The same operations through Hadoop's FileSystem in Spark's JVM (py4j)."""

    def __init__(self, uri: str, spark: SparkSession) -> None:
        self.root_uri = uri.rstrip("/")
        context = spark.sparkContext
        self._jvm: Any = context._jvm
        self._conf: Any = context._jsc.hadoopConfiguration()
        self._fs: Any = self._path().getFileSystem(self._conf)

    def _path(self, *parts: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path("/".join([self.root_uri, *parts]))

    def uri(self, *parts: str) -> str:
        return "/".join([self.root_uri, *parts])

    def exists(self, *parts: str) -> bool:
        return bool(self._fs.exists(self._path(*parts)))

    def list_dirs(self) -> list[str]:
        if not self._fs.exists(self._path()):
            return []
        return [s.getPath().getName() for s in self._fs.listStatus(self._path()) if s.isDirectory()]

    def read_text(self, *parts: str) -> str:
        stream = self._fs.open(self._path(*parts))
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data).decode("utf-8")

    def make_version_dir(self, name: str) -> bool:
        if self._fs.exists(self._path(name)):
            return False
        return bool(self._fs.mkdirs(self._path(name)))

    def upload(self, local_folder: Path, *parts: str) -> None:
        files = [p for p in sorted(local_folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
        if (local_folder / MANIFEST).exists():
            files.append(local_folder / MANIFEST)
        for source in files:
            relative = source.relative_to(local_folder).as_posix()
            self._fs.copyFromLocalFile(
                False,
                True,
                self._jvm.org.apache.hadoop.fs.Path(source.as_uri()),
                self._path(*parts, relative),
            )

    def local_copy(self, *parts: str) -> Path:
        cache = Path(tempfile.mkdtemp(prefix="imagetag-bundle-"))
        for sub in (MANIFEST, DICTIONARY_DIR, FOREST_DIR):
            if self.exists(*parts, sub):
                self._fs.copyToLocalFile(
                    False,
                    self._path(*parts, sub),
                    self._jvm.org.apache.hadoop.fs.Path(cache.as_uri()),
                    True,
                )
        return cache

    def replace_text(self, text: str, *parts: str) -> None:
        target = self._path(*parts)
        temp = self._path(*parts[:-1], f".{parts[-1]}.{uuid.uuid4().hex}.tmp")
        out = self._fs.create(temp, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        from py4j.protocol import Py4JError

        rename = self._jvm.org.apache.hadoop.fs.Options.Rename
        try:
            context = self._jvm.org.apache.hadoop.fs.FileContext.getFileContext(
                target.toUri(), self._conf
            )
            context.rename(temp, target, _java_array(rename, [rename.OVERWRITE]))
        except Py4JError:  # object stores without an AbstractFileSystem: delete + rename
            self._fs.delete(target, False)
            if not self._fs.rename(temp, target):
                raise BundleError(f"cannot rename {temp} to {target}") from None


def _java_array(java_class: Any, values: list[Any]) -> Any:
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    assert gateway is not None
    array = gateway.new_array(java_class, len(values))
    for i, value in enumerate(values):
        array[i] = value
    return array


# -- the store -----------------------------------------------------------------------------------


class ModelStore:
    """Versioned bundles under ``uri``. ``spark`` is needed only for non-local URIs (and is
    looked up as the active session when not given). ``via_hadoop`` sends even a local path
    through Hadoop's FileSystem (what the tests use to exercise that code path)."""

    def __init__(
        self, uri: str, spark: SparkSession | None = None, *, via_hadoop: bool = False
    ) -> None:
        self.uri = str(uri)
        self._fs: _LocalFS | _HadoopFS
        if is_local(self.uri) and not via_hadoop:
            self._fs = _LocalFS(_local_path(self.uri))
        else:
            if spark is None:
                from pyspark.sql import SparkSession

                spark = SparkSession.getActiveSession()
            if spark is None:
                raise BundleError(f"model store {self.uri}: a Spark session is needed for this URI")
            self._fs = _HadoopFS(self.uri, spark)

    def __repr__(self) -> str:
        return f"ModelStore({self.uri!r})"

    def path(self, version: str, *parts: str) -> str:
        """The URI of ``parts`` inside ``version`` (what Spark's model writers are given)."""
        return self._fs.uri(version, *parts)

    def list_versions(self) -> list[str]:
        """Complete versions (with a manifest), oldest first."""
        found = [
            name
            for name in self._fs.list_dirs()
            if _VERSION.match(name) and self._fs.exists(name, MANIFEST)
        ]
        return sorted(found, key=lambda name: int(name[1:]))

    def current_version(self) -> str | None:
        """What ``CURRENT`` points to, or None when nothing was promoted yet."""
        if not self._fs.exists(CURRENT):
            return None
        version = self._fs.read_text(CURRENT).strip()
        return version or None

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        """The manifest of ``version`` (default: the current one). Raises BundleError."""
        version = version or self.current_version()
        if version is None:
            raise BundleError(f"model store {self.uri}: no CURRENT version")
        if not self._fs.exists(version, MANIFEST):
            raise BundleError(f"model store {self.uri}: no version {version}")
        result: dict[str, Any] = json.loads(self._fs.read_text(version, MANIFEST))
        return result

    def allocate_version(self) -> str:
        """Create the folder of the next version (``v0001``, ``v0002``, ...) and return its name."""
        existing = [int(m.group(1)) for n in self._fs.list_dirs() if (m := _VERSION.match(n))]
        number = max(existing, default=0) + 1
        for _ in range(100):
            name = f"v{number:04d}"
            if self._fs.make_version_dir(name):
                return name
            number += 1
        raise BundleError(f"model store {self.uri}: cannot allocate a new version")

    def write(self, bundle: ModelBundle, files: Mapping[str, bytes] | None = None) -> None:
        """Write ``bundle`` into its (allocated) version folder; the manifest goes last.

        ``files``: more files for the folder, relative name -> bytes (the training's plots),
        written next to the manifest and uploaded with the bundle. Raises BundleError for a
        name that is absolute, climbs out of the folder or is one of the bundle's own."""
        own = {MANIFEST, DICTIONARY_DIR, FOREST_DIR, "spark"}
        with tempfile.TemporaryDirectory(prefix="imagetag-bundle-") as tmp:
            bundle.save(tmp)
            for name, data in (files or {}).items():
                relative = Path(name)
                parts = relative.parts
                if not parts or relative.is_absolute() or ".." in parts or parts[0] in own:
                    raise BundleError(f"{bundle.version}: cannot write a file named {name!r}")
                target = Path(tmp, relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self._fs.upload(Path(tmp), bundle.version)

    def load(self, version: str | None = None) -> ModelBundle:
        """Load ``version`` (default: the current one). Raises BundleError."""
        version = version or self.current_version()
        if version is None:
            raise BundleError(f"model store {self.uri}: no CURRENT version (train a model first)")
        if not self._fs.exists(version, MANIFEST):
            raise BundleError(f"model store {self.uri}: no complete version {version}")
        return ModelBundle.load(self._fs.local_copy(version))

    def promote(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` (atomically). Raises BundleError if incomplete."""
        if not self._fs.exists(version, MANIFEST):
            raise BundleError(f"model store {self.uri}: cannot promote incomplete {version}")
        self._fs.replace_text(version + "\n", CURRENT)


def load_current(store: str, spark: SparkSession | None = None) -> ModelBundle:
    """The bundle ``CURRENT`` points to in ``store``. Raises BundleError when there is none."""
    return ModelStore(store, spark).load()


def list_versions(store: str, spark: SparkSession | None = None) -> list[str]:
    """Complete versions in ``store``, oldest first."""
    return ModelStore(store, spark).list_versions()


def show(
    store: str, version: str | None = None, spark: SparkSession | None = None
) -> dict[str, Any]:
    """The manifest of ``version`` (default: CURRENT) in ``store``."""
    return ModelStore(store, spark).manifest(version)
