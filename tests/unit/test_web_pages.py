"""Each page of the web app with Flask's test client against a fake Solr answer (no
service is started): what it sends to Solr, what it shows, and its error pages."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from flask.testing import FlaskClient

from imagetag.errors import ServiceError
from imagetag.settings import Settings
from imagetag.testing.models import save_bundle, synthetic_bundle
from imagetag.web.app import create_app
from imagetag.web.backend import ModelSource

THUMB = base64.b64encode(b"\xff\xd8\xff\xe0fake jpeg").decode()
ID_A, ID_B, ID_C, ID_D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def doc(image_id: str, tag: str = "Bag", **fields: Any) -> dict[str, Any]:
    return {
        "id": image_id,
        "top_tag": tag,
        "tags": [tag],
        "confidence": 0.9,
        f"vote_{tag.lower()}": 0.9,
        "thumbnail": THUMB,
        **fields,
    }


class FakeSolr:
    """Answers ``select`` with ``answer(q, params)``, keeping every request."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def select(self, q: str, params: dict[str, Any]) -> dict[str, Any]:
        self.requests.append((q, params))
        return self.answer(q, params)


def found(*docs: dict[str, Any], total: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "response": {"numFound": len(docs) if total is None else total, "docs": list(docs)},
        **extra,
    }


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "models")
    save_bundle(path, synthetic_bundle(trees=8, depth=6, k=16))
    return path


def client_for(
    solr: FakeSolr, store: str, status: Callable[[], Any] | None = None, **web: Any
) -> FlaskClient:
    home = Path(store).parent
    web = {"users_file": str(home / "users.json"), "view_db": str(home / "view.sqlite"), **web}
    settings = Settings.load(model_store=store, web=web)
    app = create_app(
        settings, searcher=solr, models=ModelSource(store), status=status, sender=NoKafka()
    )
    client = app.test_client()
    with client.session_transaction() as session:  # the CSRF token a page would have given
        session["csrf"] = CSRF
    client.environ_base["HTTP_X_CSRF_TOKEN"] = CSRF
    return client


CSRF = "test-csrf-token"


class NoKafka:
    """These pages never send to Kafka: any attempt fails the test."""

    def validate(self, data: bytes) -> str:
        raise AssertionError("no page here validates for Kafka")

    def send(self, data: bytes, label: Any, metadata: Any, source: str) -> str:
        raise AssertionError("no page here sends to Kafka")


def search_answer(q: str, params: dict[str, Any]) -> dict[str, Any]:
    return found(
        doc(ID_A, "Bag", label="Bag"),
        doc(ID_B, "Sandal", label="Bag"),
        total=57,
        facet_counts={
            "facet_queries": {"vote_bag": 31, "vote_sandal": 4},
            "facet_fields": {
                "tags": ["Bag", 40, "Sandal", 17],
                "model_version": ["v0001", 57],
                "format": ["png", 57],
                "label": ["Bag", 30],
            },
        },
    )


def test_the_search_page_shows_counts_facets_and_tiles(store: str) -> None:
    solr = FakeSolr(search_answer)
    page = client_for(solr, store).get("/?tag=Bag&min=0.75&color=808080&sort=vote")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<span id="count">57</span>' in html
    assert 'value="Bag" checked> Bag <span class="count">31</span>' in html
    assert 'value="Sandal"> Sandal <span class="count">4</span>' in html
    assert f'href="/image/{ID_A}"' in html and f"data:image/jpeg;base64,{THUMB}" in html
    assert 'class="tile mismatch"' in html  # the Sandal whose label is Bag
    assert 'value="0.75"' in html and "v0001 (57)" in html
    [(q, params)] = solr.requests
    assert q == "*:*"
    assert params["fq"][0] == '{!tag=sel}(tags:"Bag" AND vote_bag:[0.7500 TO *])'
    assert params["sort"] == "vote_bag desc, id asc"
    assert "Content-Security-Policy" in page.headers


def test_a_hostile_tag_is_escaped_in_the_query_and_in_the_page(store: str) -> None:
    solr = FakeSolr(lambda q, p: found())
    hostile = '<script>alert(1)</script>") OR *:*'
    page = client_for(solr, store).get("/", query_string={"tag": hostile})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    fq = solr.requests[0][1]["fq"][0]
    assert 'tags:"<script>alert(1)</script>\\") OR *:*"' in fq


def test_a_bad_parameter_is_a_400_page(store: str) -> None:
    solr = FakeSolr(search_answer)
    page = client_for(solr, store).get("/?min=2")
    assert page.status_code == 400
    assert "min: a number from 0 to 1" in page.get_data(as_text=True)
    assert not solr.requests


def test_solr_down_is_a_clear_503_page(store: str) -> None:
    def down(q: str, params: dict[str, Any]) -> dict[str, Any]:
        raise ServiceError("solr", "http://127.0.0.1:8983/solr", "Failed to connect to server")

    page = client_for(FakeSolr(down), store).get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 503
    assert "Solr at http://127.0.0.1:8983/solr is not answering." in html
    assert "Failed to connect to server" in html


def test_an_internal_error_is_a_500_page_without_a_traceback(store: str) -> None:
    def broken(q: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    page = client_for(FakeSolr(broken), store).get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 500
    assert "Traceback" not in html and "secret internals" not in html
    assert "Something went wrong" in html


def image_answer(q: str, params: dict[str, Any]) -> dict[str, Any]:
    if q.startswith("{!knn"):
        return found(doc(ID_A, score=1.0), doc(ID_B, score=0.91), doc(ID_C, score=0.8))
    if q.startswith("phash_b0:"):  # candidates: one 2 bits away, one 20 bits away
        return found(
            {"id": ID_B, "phash": "0000000000000003"}, {"id": ID_C, "phash": "00000000000fffff"}
        )
    if params["fq"] == [f'id:"{ID_A}"']:
        return found(
            doc(
                ID_A,
                "Bag",
                vote_sandal=0.1,
                tags=["Bag"],
                label="Sandal",
                phash="0000000000000000",
                vector=[0.5, 0.5],
                colors=["#101010", "#c8c8c8"],
                model_version="v0001",
                format="png",
                width=28,
                height=28,
                size=300,
            )
        )
    if params["fq"] == [f'id:("{ID_B}")']:
        return found(doc(ID_B, phash="0000000000000003"))
    return found()


def test_the_image_page_shows_votes_similar_images_and_near_duplicates(store: str) -> None:
    solr = FakeSolr(image_answer)
    page = client_for(solr, store, near_duplicate_distance=4).get(f"/image/{ID_A}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'aria-label="vote fraction per class"' in html and ">0.90<" in html and ">0.10<" in html
    assert "(disagrees with the tag)" in html
    assert 'fill="#101010"' in html and "≈ black" in html and "≈ white" in html
    similar = html[html.index('id="similar"') : html.index('id="near"')]
    assert f"/image/{ID_B}" in similar and f"/image/{ID_C}" in similar
    assert f"/image/{ID_A}" not in similar and "similarity 0.910" in similar
    near = html[html.index('id="near"') :]
    assert f"/image/{ID_B}" in near and "2 bits apart" in near and f"/image/{ID_C}" not in near
    assert "2 candidates checked" in near
    knn = next(p for q, p in solr.requests if q.startswith("{!knn"))
    assert knn["fq"] == [f'-id:"{ID_A}"']


def test_an_unknown_or_malformed_image_id_is_a_404_page(store: str) -> None:
    client = client_for(FakeSolr(lambda q, p: found()), store)
    assert client.get(f"/image/{ID_D}").status_code == 404
    page = client.get('/image/") OR *:*')
    assert page.status_code == 404 and "64 hexadecimal digits" in page.get_data(as_text=True)


def png(side: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((side, side, 3)) * 255).astype(np.uint8)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def test_search_by_example_tags_the_upload_and_shows_its_nearest_images(store: str) -> None:
    solr = FakeSolr(lambda q, p: found(doc(ID_B, score=0.95)) if q.startswith("{!knn") else found())
    page = client_for(solr, store).post(
        "/example", data={"image": (io.BytesIO(png()), "shirt.png")}
    )
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html
    assert 'id="predicted"' in html and "model v0001" in html and "not ingested" in html
    assert f"/image/{ID_B}" in html
    [(q, params)] = solr.requests
    assert q.startswith("{!knn f=vector topK=12}[") and "fq" not in params


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        (b"hello, not an image", 400, "not_an_image"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64, 400, "JPEG 2000 is not supported"),
        (None, 400, "too_many_pixels"),  # a PNG header claiming 5000 x 5000 pixels
        (b"\x89PNG" + b"\x00" * 5000, 413, "at most 4,096 bytes"),
    ],
)
def test_uploads_are_checked_before_decoding(
    store: str, data: bytes | None, code: int, text: str
) -> None:
    if data is None:
        ihdr = b"IHDR" + struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0)
        data = (
            b"\x89PNG\r\n\x1a\n"
            + struct.pack(">I", 13)
            + ihdr
            + struct.pack(">I", zlib.crc32(ihdr))
        )
    solr = FakeSolr(lambda q, p: found())
    client = client_for(solr, store, max_upload_bytes=4096)
    page = client.post("/example", data={"image": (io.BytesIO(data), "x.png")})
    assert page.status_code == code
    assert text in page.get_data(as_text=True)
    assert not solr.requests


def test_a_request_larger_than_the_limit_is_refused_unread(store: str) -> None:
    client = client_for(FakeSolr(lambda q, p: found()), store, max_upload_bytes=1000)
    page = client.post(
        "/example",
        data=b"x" * 200_000,
        headers={"Content-Type": "multipart/form-data; boundary=zzz"},
    )
    assert page.status_code == 413 and "refused unread" in page.get_data(as_text=True)


class FakeStatus:
    def as_dict(self) -> dict[str, Any]:
        service = {"up": True, "address": "127.0.0.1:9092", "version": "4.4.0", "detail": ""}
        topic = {"topic": "images.review", "records": 3, "complete": True, "error": None}
        return {
            "ok": False,
            "taken_at": "2026-12-01T12:00:00+00:00",
            "services": {
                "kafka": service,
                "solr": {**service, "address": "http://127.0.0.1:8983/solr"},
                "spark": {**service, "up": None},
                "stream": {**service, "up": False, "detail": "not running"},
            },
            "stream": {"alive": False, "reason": "no /metrics", "records": {}, "lag": None},
            "solr": {
                "alias": "images",
                "collections": ["images_1"],
                "total": 9876,
                "by_model_version": {"v0001": 9876},
            },
            "review": topic,
            "dead_letters": {
                **topic,
                "topic": "images.dlq",
                "records": 5,
                "by_reason": [{"stage": "decode", "reason": "truncated", "count": 5}],
            },
            "model": {
                "current": "v0001",
                "created": "2026-12-01",
                "data": "fashion-mnist",
                "metrics": {"accuracy": 0.86},
            },
        }


def test_the_status_page_and_the_model_plots(store: str) -> None:
    client = client_for(FakeSolr(lambda q, p: found()), store, status=FakeStatus)
    page = client.get("/status")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<td id="solr-total">9876</td>' in html and "decode / truncated" in html
    assert "accuracy" in html and 'src="/model/v0001/confusion.png"' in html
    assert client.get("/model/v0001/confusion.png").status_code == 404  # none written, no metrics
    plot = b"\x89PNG\r\n\x1a\nplot"
    (Path(store) / "v0001" / "confusion.png").write_bytes(plot)
    answer = client.get("/model/v0001/confusion.png")
    assert answer.status_code == 200 and answer.data == plot and answer.mimetype == "image/png"
    assert client.get("/model/../etc/confusion.png").status_code == 404
    assert client.get("/model/v0001/manifest.json").status_code == 404


def test_the_web_command_reads_solr_as_the_searcher_on_a_secured_stack(tmp_path: Path) -> None:
    from imagetag.commands.web import searcher_settings
    from imagetag.secure_stack import StackCredentials

    credentials = StackCredentials.load_or_create(tmp_path)
    secured = Settings.load(stack={"secure": True, "home": str(tmp_path)})
    derived = searcher_settings(secured)
    assert derived.solr.username == "searcher"
    assert derived.solr.password is not None
    assert derived.solr.password.get_secret_value() == credentials.solr["searcher"]
    assert searcher_settings(Settings.load()).solr.username is None


def test_the_original_bytes_come_from_the_archive_partition_of_the_ingest_day(
    store: str, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = png()
    day = tmp_path / "archive" / "ingest_date=2026-12-01"
    day.mkdir(parents=True)
    table = pa.table({"id": [ID_B, ID_A], "image": [b"other", data]})
    pq.write_table(table, day / "part-0.parquet")
    stamps = {ID_A: "2026-12-01T10:00:00.000Z", ID_C: "2026-11-30T10:00:00.000Z"}

    def answer(q: str, params: dict[str, Any]) -> dict[str, Any]:
        image_id = params["fq"][0].split('"')[1]
        return found(doc(image_id, ingested_at=stamps[image_id]))

    settings = Settings.load(
        model_store=store,
        archive_dir=str(tmp_path / "archive"),
        web={"users_file": str(tmp_path / "users.json"), "view_db": str(tmp_path / "v.sqlite")},
    )
    client = create_app(
        settings, searcher=FakeSolr(answer), models=ModelSource(store)
    ).test_client()
    page = client.get(f"/image/{ID_A}/original")
    assert page.status_code == 200 and page.data == data and page.mimetype == "image/png"
    assert page.headers["Content-Security-Policy"] == "sandbox"
    assert client.get(f"/image/{ID_C}/original").status_code == 404  # no partition that day
