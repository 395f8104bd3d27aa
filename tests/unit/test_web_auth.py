"""Part 2 of the web app with Flask's test client: login, roles, CSRF, throttling, uploads
(the producer's real validation; a recording sender instead of Kafka), the review view and
corrections (a real SQLite view fed real Avro TagResult records, a real Parquet archive)."""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flask.testing import FlaskClient

from imagetag.avro import AvroSerializer
from imagetag.settings import Settings
from imagetag.testing.models import save_bundle, synthetic_bundle
from imagetag.web.app import create_app
from imagetag.web.auth import LoginThrottle, UserStore
from imagetag.web.backend import ModelSource
from imagetag.web.ingest import refusal
from imagetag.web.review import ViewStore, decode_records
from tests.unit.test_web_pages import FakeSolr, doc, found, png

PASSWORD = "correct horse battery staple"
ID_R = "e" * 64


class RecordingSender:
    """The real producer's validation (``validate_image``: no Kafka client); sends are
    recorded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent: list[tuple[bytes, str | None, dict[str, str], str]] = []

    def validate(self, data: bytes) -> str:
        return refusal(data, self.settings)

    def send(self, data: bytes, label: str | None, metadata: Any, source: str) -> str:
        import hashlib

        self.sent.append((data, label, dict(metadata), source))
        return hashlib.sha256(data).hexdigest()


class RecordingLabels:
    def __init__(self) -> None:
        self.labels: list[tuple[str, str]] = []

    def set_label(self, image_id: str, label: str) -> None:
        self.labels.append((image_id, label))


class App:
    def __init__(self, tmp_path: Path, solr: FakeSolr | None = None, **web: Any) -> None:
        store = str(tmp_path / "models")
        save_bundle(store, synthetic_bundle(trees=8, depth=6, k=16))
        self.users = UserStore(tmp_path / "users.json")
        self.view = ViewStore(tmp_path / "view.sqlite")
        self.settings = Settings.load(
            model_store=store,
            archive_dir=str(tmp_path / "archive"),
            limits={"max_bytes": 20_000},
            web={
                "users_file": str(tmp_path / "users.json"),
                "view_db": str(tmp_path / "view.sqlite"),
                **web,
            },
        )
        self.sender = RecordingSender(self.settings)
        self.labels = RecordingLabels()
        self.solr = solr or FakeSolr(lambda q, p: found())
        self.app = create_app(
            self.settings,
            searcher=self.solr,
            models=ModelSource(store),
            users=self.users,
            view=self.view,
            sender=self.sender,
            labels=self.labels,
        )

    def client(self, user: str | None = None, *roles: str) -> FlaskClient:
        client = self.app.test_client()
        if user is not None:
            self.users.add(user, PASSWORD, list(roles))
            page = client.get("/login")
            answer = client.post(
                "/login", data={"user": user, "password": PASSWORD, "csrf_token": token(page)}
            )
            assert answer.status_code == 302, answer.get_data(as_text=True)
        return client


def token(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, "the page has no CSRF field"
    return match.group(1)


def form_token(client: FlaskClient, path: str = "/login") -> str:
    return token(client.get(path))


@pytest.fixture
def web(tmp_path: Path) -> App:
    return App(tmp_path)


def test_login_sets_a_signed_http_only_samesite_cookie_and_logout_ends_it(web: App) -> None:
    client = web.app.test_client()
    web.users.add("ann", PASSWORD, ["uploader"])
    csrf = form_token(client)
    answer = client.post(
        "/login", data={"user": "ann", "password": PASSWORD, "csrf_token": csrf, "next": "/upload"}
    )
    assert answer.status_code == 302 and answer.headers["Location"] == "/upload"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/upload").status_code == 200
    out = client.post("/logout", data={"csrf_token": form_token(client, "/upload")})
    assert out.status_code == 302
    assert client.get("/upload").status_code == 302  # back to the login page


def test_a_next_target_off_the_site_is_ignored(web: App) -> None:
    client = web.app.test_client()
    web.users.add("ann", PASSWORD, ["viewer"])
    answer = client.post(
        "/login",
        data={
            "user": "ann",
            "password": PASSWORD,
            "csrf_token": form_token(client),
            "next": "https://evil.example/",
        },
    )
    assert answer.headers["Location"] == "/"


def test_the_secure_flag_is_a_setting(tmp_path: Path) -> None:
    web = App(tmp_path, secure_cookies=True)
    client = web.app.test_client()
    assert "Secure" in client.get("/login").headers["Set-Cookie"]


def test_pages_that_need_a_role_refuse_without_it(web: App) -> None:
    anonymous = web.app.test_client()
    assert anonymous.get("/upload").status_code == 302
    assert anonymous.get("/review").status_code == 302
    csrf = form_token(anonymous)
    assert anonymous.post(f"/label/{ID_R}", data={"csrf_token": csrf}).status_code == 401
    viewer = web.client("vic", "viewer")
    assert viewer.get("/upload").status_code == 403
    assert viewer.get("/review").status_code == 403
    assert "needs the reviewer role" in viewer.get("/review").get_data(as_text=True)
    csrf = form_token(viewer, "/")
    assert (
        viewer.post(f"/label/{ID_R}", data={"label": "Bag", "csrf_token": csrf}).status_code == 403
    )
    uploader = web.client("upa", "uploader")
    assert uploader.get("/upload").status_code == 200
    assert uploader.get("/review").status_code == 403
    assert web.labels.labels == [] and web.view.correction(ID_R) is None


def test_search_needs_a_login_only_when_the_setting_says_so(tmp_path: Path) -> None:
    open_app = App(tmp_path / "open")
    assert open_app.app.test_client().get("/").status_code == 200
    closed = App(tmp_path / "closed", login_required_for_search=True)
    assert closed.app.test_client().get("/").status_code == 302
    assert closed.app.test_client().get(f"/api/ingest/{ID_R}").status_code == 401
    assert closed.client("vic", "viewer").get("/").status_code == 200
    assert closed.client("upa", "uploader").get("/").status_code == 403


def test_posts_without_the_csrf_token_are_refused(web: App) -> None:
    web.users.add("ann", PASSWORD, ["uploader", "reviewer"])
    client = web.app.test_client()
    login = client.post("/login", data={"user": "ann", "password": PASSWORD})
    assert login.status_code == 400 and "CSRF" in login.get_data(as_text=True)
    client = web.client("bob", "uploader", "reviewer")
    upload = client.post("/upload", data={"images": (io.BytesIO(png()), "a.png")})
    assert upload.status_code == 400
    wrong = client.post(
        "/upload", data={"images": (io.BytesIO(png()), "a.png"), "csrf_token": "forged"}
    )
    assert wrong.status_code == 400
    assert client.post("/example", data={"image": (io.BytesIO(png()), "a.png")}).status_code == 400
    assert client.post(f"/label/{ID_R}", data={"label": "Bag"}).status_code == 400
    assert client.post("/logout").status_code == 400
    assert web.sender.sent == []


def test_an_upload_sends_the_valid_files_and_lists_the_refused_with_their_reason(
    web: App,
) -> None:
    client = web.client("upa", "uploader")
    csrf = form_token(client, "/upload")
    valid = png()
    files = [
        (io.BytesIO(valid), "shirt.png"),
        (io.BytesIO(b"%PDF-1.4 not an image at all"), "doc.pdf"),
        (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 30_000), "huge.png"),
        (io.BytesIO(b""), "empty.png"),
    ]
    page = client.post("/upload", data={"images": files, "csrf_token": csrf})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert [s[0] for s in web.sender.sent] == [valid]
    (_, label, metadata, source) = web.sender.sent[0]
    assert (
        label is None and metadata == {"uploaded_by": "upa"} and source == "web://upload/shirt.png"
    )
    import hashlib

    image_id = hashlib.sha256(valid).hexdigest()
    assert f'href="/ingest/{image_id}"' in html
    assert re.search(r"doc\.pdf</td><td><span class=\"reason\">not_an_image</span>", html)
    assert re.search(r"huge\.png</td><td><span class=\"reason\">too_many_bytes</span>", html)
    assert re.search(r"empty\.png</td><td><span class=\"reason\">empty</span>", html)
    status = client.get(f"/api/ingest/{image_id}").get_json()
    assert status["state"] == "sent"


def test_an_upload_over_its_header_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    web = App(tmp_path, max_upload_side=8)
    client = web.client("upa", "uploader")
    page = client.post(
        "/upload",
        data={
            "images": [(io.BytesIO(png()), "big.png")],
            "csrf_token": form_token(client, "/upload"),
        },
    )
    assert "too_large" in page.get_data(as_text=True) or "side" in page.get_data(as_text=True)
    assert web.sender.sent == []


def test_repeated_failed_logins_are_delayed_per_user_and_per_address(web: App) -> None:
    web.users.add("ann", PASSWORD, ["viewer"])
    client = web.app.test_client()
    csrf = form_token(client)
    for _ in range(5):
        bad = client.post(
            "/login", data={"user": "ann", "password": "nope-nope", "csrf_token": csrf}
        )
        assert bad.status_code == 401
    good = client.post("/login", data={"user": "ann", "password": PASSWORD, "csrf_token": csrf})
    assert good.status_code == 429 and "Too many failed logins" in good.get_data(as_text=True)


def test_the_throttle_grows_and_clears() -> None:
    now = [0.0]
    throttle = LoginThrottle(free=2, base_s=1.0, ceiling_s=8.0, clock=lambda: now[0])
    for _ in range(2):
        throttle.failed("ann", "1.2.3.4")
    assert throttle.wait_s("ann", "9.9.9.9") == 1.0  # per user
    assert throttle.wait_s("bob", "1.2.3.4") == 1.0  # per address
    throttle.failed("ann", "1.2.3.4")
    assert throttle.wait_s("ann", "1.2.3.4") == 2.0
    for _ in range(10):
        throttle.failed("ann", "1.2.3.4")
    assert throttle.wait_s("ann", "1.2.3.4") == 8.0  # the ceiling
    now[0] = 100.0
    assert throttle.wait_s("ann", "1.2.3.4") == 0.0
    throttle.succeeded("ann", "1.2.3.4")
    throttle.failed("ann", "1.2.3.4")
    assert throttle.wait_s("ann", "1.2.3.4") == 0.0


def test_a_password_is_never_logged_nor_stored_in_clear(
    web: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import argparse

    from imagetag.commands.web import manage_users

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    args = argparse.Namespace(
        user_command="add", name="ann", role=["reviewer"], password_stdin=True
    )
    assert manage_users(args, web.settings) == 0
    client = web.app.test_client()
    csrf = form_token(client)
    client.post("/login", data={"user": "ann", "password": PASSWORD + "x", "csrf_token": csrf})
    client.post("/login", data={"user": "ann", "password": PASSWORD, "csrf_token": csrf})
    assert client.get("/review").status_code == 200
    users_file = tmp_path / "users.json"
    text = users_file.read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert PASSWORD not in caplog.text and "login ann" in caplog.text
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{users_file}.secret").stat().st_mode) == 0o600


def review_record(
    image_id: str, tagged_at: int, top: str = "Bag"
) -> tuple[str, int, int, bytes | None, bytes | None]:
    value = AvroSerializer("TagResult")(
        {
            "id": image_id,
            "source": "test://x",
            "tags": [],
            "top_tag": top,
            "confidence": 0.3,
            "votes": {top: 0.3, "Shirt": 0.25},
            "threshold": 0.4,
            "model_version": "v0001",
            "width": 28,
            "height": 28,
            "format": "png",
            "content_type": "image/png",
            "size": 100,
            "phash": "0" * 16,
            "label": None,
            "metadata": {},
            "produced_at": dt.datetime.fromtimestamp(tagged_at / 1000, dt.UTC),
            "ingested_at": dt.datetime.fromtimestamp(tagged_at / 1000, dt.UTC),
            "tagged_at": dt.datetime.fromtimestamp(tagged_at / 1000, dt.UTC),
        }
    )
    return ("images.review", 0, tagged_at, image_id.encode(), value)


def archive(folder: Path, image_id: str, data: bytes, at_ms: int) -> None:
    day = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%d")
    part = folder / f"ingest_date={day}"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"id": [image_id], "image": [data]}), part / "part-0.parquet")


def test_the_review_queue_is_newest_first_and_a_correction_feeds_the_archive(web: App) -> None:
    import hashlib

    data = png()
    corrected = hashlib.sha256(data).hexdigest()
    at = 1_780_000_000_000
    records = [review_record("a" * 64, at - 5000), review_record(corrected, at)]
    reviews, dead = decode_records(web.settings, records)
    web.view.apply(reviews, dead, {("images.review", 0): at + 1})
    reviewer = web.client("rev", "reviewer")
    html = reviewer.get("/review").get_data(as_text=True)
    assert html.index(corrected) < html.index("a" * 64)  # newest first
    assert "Bag 0.30, Shirt 0.25" in html
    status = reviewer.get(f"/api/ingest/{corrected}").get_json()
    assert status["state"] == "review" and status["votes"]["Bag"] == pytest.approx(0.3)

    csrf = token(reviewer.get("/review"))
    answer = reviewer.post(f"/label/{corrected}", data={"label": "Shirt", "csrf_token": csrf})
    assert answer.status_code == 302
    correction = web.view.correction(corrected)
    assert correction is not None and correction.user == "rev" and correction.label == "Shirt"
    assert correction.resent_at is None  # the archive does not hold the bytes yet
    assert web.sender.sent == [] and web.labels.labels == []  # not in Solr: no label write

    archive(Path(web.settings.archive_dir), corrected, data, at)
    web.app.extensions["imagetag.resend_pending"]()
    [(sent, label, metadata, _)] = web.sender.sent
    assert sent == data and label == "Shirt" and metadata["corrected_by"] == "rev"
    resent = web.view.correction(corrected)
    assert resent is not None and resent.resent_at is not None
    html = reviewer.get("/review").get_data(as_text=True)
    assert corrected not in html and "a" * 64 in html  # out of the queue once corrected
    assert reviewer.get(f"/api/ingest/{corrected}").get_json()["correction"]["label"] == "Shirt"


def test_a_wrong_tag_on_an_image_page_updates_solr_as_the_indexer(tmp_path: Path) -> None:
    image = doc(ID_R, "Bag", label="Bag", source="s", ingested_at="2026-06-01T10:00:00Z")
    image.update(model_version="v0001", format="png", width=28, height=28, size=100)
    web = App(tmp_path, solr=FakeSolr(lambda q, p: found(image)))
    reviewer = web.client("rev", "reviewer")
    page = reviewer.get(f"/image/{ID_R}")
    assert 'id="wrong-tag"' in page.get_data(as_text=True)
    answer = reviewer.post(f"/label/{ID_R}", data={"label": "Sandal", "csrf_token": token(page)})
    assert answer.status_code == 302 and answer.headers["Location"] == f"/ingest/{ID_R}"
    assert web.labels.labels == [(ID_R, "Sandal")]
    correction = web.view.correction(ID_R)
    assert correction is not None and correction.previous == "Bag"
    assert 'id="wrong-tag"' not in web.client("vic", "viewer").get(f"/image/{ID_R}").get_data(
        as_text=True
    )


def test_dead_letters_answer_the_status_of_their_image(web: App) -> None:
    from imagetag.records import dead_letter

    key, value = dead_letter(ID_R.encode(), b"x", ("images", 0, 7), "decode", "corrupt", "bad")
    reviews, dead = decode_records(web.settings, [("images.dlq", 0, 0, key, value)])
    web.view.apply(reviews, dead, {("images.dlq", 0): 1})
    state = web.app.test_client().get(f"/api/ingest/{ID_R}").get_json()
    assert state == {**state, "state": "dead", "stage": "decode", "reason": "corrupt"}
    assert web.view.offsets("images.dlq") == {0: 1}


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example/", "/\t/evil.example", "x", ""],
)
def test_login_never_sends_anyone_to_another_site(target: str) -> None:
    from imagetag.web.routes import _safe_next

    assert _safe_next(target) == "/"


def test_login_goes_back_to_the_page_it_came_from() -> None:
    from imagetag.web.routes import _safe_next

    assert _safe_next("/review?page=2") == "/review?page=2"
