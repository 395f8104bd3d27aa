"""``imagetag model``: the bundles in the model store.

- ``imagetag model list``: every complete version, oldest first; ``*`` marks CURRENT.
- ``imagetag model show [VERSION]``: the manifest of VERSION (default: CURRENT) as JSON on
  stdout; where its plots are (``confusion.png``, ``threshold.png``) on stderr.
- ``imagetag model promote VERSION``: point CURRENT at VERSION (atomic switch).

A local store needs no Spark; a Hadoop filesystem URI starts a Spark session to reach it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from imagetag.settings import Settings

if TYPE_CHECKING:
    from imagetag.bundle import ModelStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list the versions in the model store")
    show = actions.add_parser("show", help="print a version's manifest as JSON")
    show.add_argument("version", nargs="?", help="e.g. v0003 (default: CURRENT)")
    promote = actions.add_parser("promote", help="make VERSION the CURRENT model")
    promote.add_argument("version", help="e.g. v0003")


def _store(settings: Settings) -> ModelStore:
    from imagetag.bundle import ModelStore, is_local

    if is_local(settings.model_store):
        return ModelStore(settings.model_store)
    from imagetag.spark import spark_session

    return ModelStore(settings.model_store, spark_session(settings, "imagetag-model"))


def manifest_summary(manifest: dict[str, Any]) -> str:
    metrics = manifest.get("metrics", {})
    accuracy = metrics.get("accuracy")
    coverage = metrics.get("coverage")
    parts = [
        manifest.get("created", "?"),
        f"{manifest.get('featurizer', {}).get('name', '?')} k={manifest.get('k', '?')}",
        f"trees={manifest.get('trees', '?')} depth={manifest.get('depth', '?')}",
        f"accuracy={accuracy:.4f}" if isinstance(accuracy, float) else "accuracy=?",
        f"coverage={coverage:.4f}" if isinstance(coverage, float) else "",
        str(manifest.get("data", {}).get("source", "")),
    ]
    return "  ".join(p for p in parts if p)


def plot_paths(store: ModelStore, manifest: dict[str, Any]) -> list[str]:
    """Where the plots a manifest lists (``files``: ``*_plot``) are in ``store``."""
    files = manifest.get("files", {})
    return [
        store.path(manifest["version"], str(files[key]))
        for key in sorted(files)
        if key.endswith("_plot")
    ]


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    if args.action == "list":
        current = store.current_version()
        versions = store.list_versions()
        if not versions:
            print(f"no model in {store.uri} (run `imagetag train`)")
        for version in versions:
            mark = "*" if version == current else " "
            print(f"{mark} {version}  {manifest_summary(store.manifest(version))}")
        return 0
    if args.action == "show":
        manifest = store.manifest(args.version)
        print(json.dumps(manifest, indent=2, sort_keys=True))
        for path in plot_paths(store, manifest):
            print(f"plot: {path}", file=sys.stderr)  # stderr: stdout stays one JSON document
        return 0
    store.promote(args.version)
    print(f"CURRENT -> {args.version}")
    return 0
