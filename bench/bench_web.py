"""Benchmark: page-load times of ``imagetag web`` with 10,000 indexed images.

Fills its own collection with 10,000 documents: Fashion-MNIST images (the test split, then the
training split) tagged in-process with
``tag_batch`` and the model store's CURRENT model (as the stream tags them) and written with
the project's Solr writer; then serves the app (the same ``create_app`` + waitress server
``imagetag web`` runs) on a free loopback port and loads each page ``--loads`` times over
HTTP, after one warm-up load, printing p50 / p90 / max of the time to the last byte:

- the search page (no filter; one tag with the slider at 0.8; colour + disagreement filters;
  page 20), the image page (kNN similar images + pHash near-duplicates), search by example
  (an upload tagged in-process, then kNN).

Runs on the stack the settings name (started if needed), e.g. a private one:

    IMAGETAG_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:39092 IMAGETAG_SOLR__URL=http://127.0.0.1:38983/solr \\
    IMAGETAG_STACK__HOME=.stack/helper IMAGETAG_STACK__KAFKA_CONTROLLER_PORT=39093 \\
    .venv/bin/python bench/bench_web.py [--images 10000] [--loads 20] [--model-store models]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from imagetag.bundle import ModelStore
from imagetag.datasets import FASHION_MNIST_LABELS, Record, fashion_mnist_paths, read_idx
from imagetag.documents import to_solr_doc
from imagetag.settings import Settings
from imagetag.solr import SolrWriter
from imagetag.stack import LocalStack
from imagetag.tagging import tag_batch
from imagetag.testing.services import isolated_settings
from imagetag.web.app import create_app
from imagetag.web.server import WebServer


def fashion_records() -> Iterator[Record]:
    """The Fashion-MNIST test images, then the training images."""
    for split in ("test", "train"):
        yield from read_idx(*fashion_mnist_paths(split), label_names=FASHION_MNIST_LABELS)


def index(settings: Settings, count: int, chunk: int = 1000) -> tuple[int, float, str]:
    """Tag Fashion-MNIST images until ``count`` documents are written (the ones below the
    threshold go to review in the stream, and here nowhere); returns (documents, seconds,
    an id)."""
    model = ModelStore(settings.model_store).load()
    records = fashion_records()
    writer = SolrWriter(settings)
    started, written, tagged_count, some_id = time.monotonic(), 0, 0, ""
    while written < count:
        rows = [
            {
                "id": hashlib.sha256(r.data).hexdigest(),
                "image": r.data,
                "content_type": "image/png",
                "source": f"bench://fashion/{r.name}",
                "produced_at": int(time.time() * 1000),
                "label": r.label,
                "metadata": None,
            }
            for r in itertools.islice(records, chunk)
        ]
        if not rows:
            break
        tagged, _, _ = tag_batch(pd.DataFrame(rows), model, threshold=settings.vote_threshold)
        tagged_count += len(rows)
        docs = [to_solr_doc(row) for row in tagged.to_dict("records")][: count - written]
        written += writer.write(docs).accepted
        some_id = some_id or str(docs[0]["id"])
        print(f"\r  indexed {written} of {tagged_count} images tagged", end="", flush=True)
    base = f"{settings.solr.url}/{settings.solr.collection}"
    requests.get(f"{base}/update", params={"commit": "true"}, timeout=120).raise_for_status()
    print()
    return written, time.monotonic() - started, some_id


def timed(call: object, loads: int) -> list[float]:
    """Milliseconds of ``loads`` calls after one warm-up call."""
    call()  # type: ignore[operator]
    out = []
    for _ in range(loads):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--model-store", help="default: the settings' model_store")
    args = parser.parse_args()
    settings = Settings.load()
    if args.model_store:
        settings = settings.derive(model_store=args.model_store)
    if ModelStore(settings.model_store).current_version() is None:
        print(f"no CURRENT model in {settings.model_store}: run `imagetag train` first")
        return 1
    LocalStack(settings).up()
    scratch = Path(tempfile.mkdtemp(prefix="bench_web_"))  # the app's secret key and view
    web = {"users_file": str(scratch / "users.json"), "view_db": str(scratch / "view.sqlite")}
    with isolated_settings(settings, f"bench_web_{uuid.uuid4().hex[:8]}", web=web) as bench:
        written, seconds, image_id = index(bench, args.images)
        print(f"  {written} documents in {seconds:.0f}s ({written / seconds:.0f} images/s)")
        server = WebServer(create_app(bench), "127.0.0.1", 0, bench.web.threads)
        threading.Thread(target=server.run, daemon=True).start()
        session = requests.Session()
        top = "Trouser"
        example = next(iter(read_idx(*fashion_mnist_paths("train"), count=1))).data

        def get(path: str) -> object:
            def call() -> None:
                response = session.get(server.url + path, timeout=60)
                assert response.status_code == 200, (path, response.status_code)

            return call

        # The search page's form carries the session's CSRF token (every POST needs it).
        form = session.get(server.url + "/", timeout=60).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token, "no csrf_token in the search page's form"

        def upload() -> None:
            files = {"image": ("example.png", example, "image/png")}
            data = {"csrf_token": token.group(1)}
            response = session.post(server.url + "/example", files=files, data=data, timeout=60)
            assert response.status_code == 200, response.status_code

        pages = [
            ("search: everything", get("/")),
            (f"search: {top}, slider 0.80", get(f"/?tag={top}&min=0.80")),
            ("search: colour + disagreement", get("/?color=ffffff&disagree=1&sort=newest")),
            ("search: page 20", get("/?page=20")),
            ("image page (kNN + near-dups)", get(f"/image/{image_id}")),
            ("search by example (upload)", upload),
        ]
        print(f"\n{written} indexed images, {args.loads} loads each (after one warm-up)\n")
        header = f"{'page':<32} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}"
        print(header)
        print("-" * len(header))
        for name, call in pages:
            times = timed(call, args.loads)
            p50 = statistics.median(times)
            p90 = float(np.percentile(times, 90))
            print(f"{name:<32} {p50:>8.1f} {p90:>8.1f} {max(times):>8.1f}")
        session.close()  # its keep-alive connections first, then the server
        time.sleep(0.5)
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
