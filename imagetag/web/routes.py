"""Part 2 of the web app: login, upload to ingest, per-image status, the review queue and
corrections (installed on the app of :func:`imagetag.web.app.create_app`).

- ``/login`` (GET, POST), ``/logout`` (POST): the session holds the user's name and a CSRF
  token; roles are re-read from the users file on every request (a removed user is out at
  once). Failed logins wait growing delays (:class:`imagetag.web.auth.LoginThrottle`).
- ``/upload`` (uploader): one or many files, each checked (size from the spooled upload
  before it is read, the producer's validation, the header's pixel limits before any decode)
  and sent through ``ImageProducer``; refused files listed with their reason at once.
- ``/ingest/<id>`` and ``/api/ingest/<id>``: where an image is (sent, tagged, review, dead).
- ``/review`` (reviewer): the materialised view's queue, newest first, with votes;
  ``/label/<id>`` (reviewer, POST) records a correction.

Every POST must carry the session's CSRF token (form field or header): checked before any
handler runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlparse

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, session

from imagetag.errors import ServiceError
from imagetag.settings import Settings
from imagetag.web import auth
from imagetag.web.auth import REVIEWER, UPLOADER, VIEWER, LoginThrottle, User, UserStore
from imagetag.web.ingest import LabelWriter, Sender, iso
from imagetag.web.review import Reviewed, ViewStore

log = logging.getLogger(__name__)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
LABEL = re.compile(r"^[^\x00-\x1f<>]{1,64}$")
# The part-1 pages that need the viewer role when web.login_required_for_search is set.
SEARCH_ENDPOINTS = frozenset(
    {"search", "image", "original", "example", "example_form", "status_page", "model_plot"}
)
OPEN_ENDPOINTS = frozenset({"login", "login_form", "health", "static"})


def install(
    app: Flask,
    settings: Settings,
    *,
    users: UserStore,
    view: ViewStore,
    sender: Sender,
    labels: LabelWriter,
    fetch: Callable[[str], dict[str, Any] | None],
    classes: Callable[[], list[str]],
    error_page: Callable[..., Any],
    archived: Callable[[str, int | None], bytes | None],
) -> None:
    """Add the part-2 routes and guards to ``app``. ``fetch(id)``: the Solr document or None;
    ``archived(id, ingested_at_ms)``: the original bytes from the raw archive or None."""
    web = settings.web
    throttle = LoginThrottle(web.login_free_failures, web.login_delay_s, web.login_max_delay_s)
    upload_limit = min(web.max_upload_bytes, settings.limits.max_bytes)
    limits = _Limits(upload_limit, web.max_upload_pixels, web.max_upload_side)

    def current_user() -> User | None:
        if "user" not in g:
            name = session.get("user")
            g.user = users.get(str(name)) if name else None
        user: User | None = g.user
        return user

    def csrf_token() -> str:
        token = session.get("csrf")
        if not token:
            token = session["csrf"] = auth.new_csrf_token()
        return str(token)

    app.jinja_env.globals.update(csrf_token=csrf_token, current_user=current_user, iso=iso)

    @app.before_request
    def guard() -> Any:
        if request.method == "POST":
            given = request.headers.get(auth.CSRF_HEADER) or request.form.get(auth.CSRF_FIELD)
            if not auth.csrf_ok(session.get("csrf"), given):
                return error_page(
                    400,
                    "This form has expired or did not come from this site.",
                    "CSRF token missing or wrong; reload the page and try again",
                )
        if web.login_required_for_search and request.endpoint in SEARCH_ENDPOINTS:
            refused = refuse(VIEWER)
            if refused is not None:
                return refused
        return None

    def refuse(role: str) -> Any:
        """None when the current user holds ``role``; else the refusal (a login redirect for
        a page, 401/403 for an API or a POST)."""
        user = current_user()
        if user is not None and user.has(role):
            return None
        api = request.path.startswith("/api/") or request.method != "GET"
        if user is None:
            if api:
                return error_page(401, "Log in first.")
            return redirect("/login?next=" + _quote(request.full_path.rstrip("?")))
        return error_page(403, f"This needs the {role} role; {user.name} does not hold it.")

    def needs(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(view_fn: Callable[..., Any]) -> Callable[..., Any]:
            @wraps(view_fn)
            def checked(*args: Any, **kwargs: Any) -> Any:
                refused = refuse(role)
                return refused if refused is not None else view_fn(*args, **kwargs)

            return checked

        return wrap

    # -- login -------------------------------------------------------------------------------

    @app.get("/login")
    def login_form() -> str:
        return render_template("login.html", next=_safe_next(request.args.get("next")), error="")

    @app.post("/login")
    def login() -> Any:
        name = request.form.get("user", "")[:64]
        password = request.form.get("password", "")
        address = request.remote_addr or "?"
        target = _safe_next(request.form.get("next"))
        wait = throttle.wait_s(name, address)
        if wait > 0:
            log.warning("login throttled for %r from %s (%.0fs)", name, address, wait)
            return render_template(
                "login.html", next=target, error=f"Too many failed logins: wait {wait:.0f}s."
            ), 429
        user = users.verify(name, password) if name and password else None
        if user is None:
            throttle.failed(name, address)
            log.info("failed login for %r from %s", name, address)
            return render_template(
                "login.html", next=target, error="Wrong user name or password."
            ), 401
        throttle.succeeded(name, address)
        session.clear()
        session.permanent = True
        session["user"] = user.name
        session["csrf"] = auth.new_csrf_token()  # a new token for the new session
        log.info("login %s from %s", user.name, address)
        return redirect(target)

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect("/login")

    # -- upload --------------------------------------------------------------------------------

    @app.get("/upload")
    @needs(UPLOADER)
    def upload_form() -> str:
        return render_template("upload.html", results=None, limit=upload_limit, web=web)

    @app.post("/upload")
    @needs(UPLOADER)
    def upload() -> Any:
        files = [f for f in request.files.getlist("images") if f.filename]
        if not files:
            return error_page(400, "Choose one or more image files to send.")
        if len(files) > web.max_upload_files:
            return error_page(400, f"At most {web.max_upload_files} files at a time.")
        from imagetag.images import ImageRejected, read_header

        user = current_user()
        assert user is not None
        results = []
        for item in files:
            name = str(item.filename)[:200]
            stream = item.stream
            stream.seek(0, 2)
            size = stream.tell()  # spooled by the form parser: measured, not read
            stream.seek(0)
            if size > upload_limit:
                results.append(
                    _refused(name, "too_many_bytes", f"{size:,} bytes > {upload_limit:,}")
                )
                continue
            data = stream.read(upload_limit + 1)
            reason = sender.validate(data)
            if not reason:
                try:  # the header's size against the limits: nothing decoded
                    read_header(data, limits)
                except ImageRejected as exc:
                    reason = f"{exc.reason}: {exc.detail}"
            if reason:
                token, _, detail = reason.partition(": ")
                results.append(_refused(name, token, detail))
                continue
            try:
                image_id = sender.send(
                    data, None, {"uploaded_by": user.name}, f"web://upload/{_quote(name)}"
                )
            except ServiceError as exc:
                results.append(_refused(name, "not_sent", exc.reason))
                continue
            view.uploaded(image_id, user.name, name)
            results.append({"name": name, "id": image_id, "reason": None, "detail": ""})
        sent = sum(1 for r in results if r["id"])
        log.info("upload by %s: %d sent, %d refused", user.name, sent, len(results) - sent)
        return render_template("upload.html", results=results, limit=upload_limit, web=web)

    # -- per-image status ----------------------------------------------------------------------

    def where(image_id: str) -> dict[str, Any]:
        doc = fetch(image_id)
        correction = view.correction(image_id)
        corrected = (
            {
                "label": correction.label,
                "by": correction.user,
                "at": iso(correction.at),
                "resent": correction.resent_at is not None,
                "note": correction.note,
            }
            if correction
            else None
        )
        if doc is not None:
            return {
                "id": image_id,
                "state": "tagged",
                "tags": list(doc.get("tags", [])),
                "top_tag": doc.get("top_tag"),
                "label": doc.get("label"),
                "url": f"/image/{image_id}",
                "correction": corrected,
            }
        reviewed = view.reviewed(image_id)
        if reviewed is not None:
            return {
                "id": image_id,
                "state": "review",
                "top_tag": reviewed.top_tag,
                "votes": dict(reviewed.votes),
                "model_version": reviewed.model_version,
                "tagged_at": iso(reviewed.tagged_at),
                "correction": corrected,
            }
        dead = view.dead(image_id)
        if dead is not None:
            return {
                "id": image_id,
                "state": "dead",
                "stage": dead.stage,
                "reason": dead.reason,
                "detail": dead.detail,
                "failed_at": iso(dead.failed_at),
            }
        uploaded = view.upload(image_id)
        if uploaded is not None:
            return {"id": image_id, "state": "sent", "sent_at": iso(uploaded[2])}
        return {"id": image_id, "state": "unknown"}

    def status_of(image_id: str) -> dict[str, Any]:
        if not HEX64.match(image_id):
            abort(404, "An image id is 64 lowercase hexadecimal digits.")
        return where(image_id)

    @app.get("/api/ingest/<image_id>")
    def ingest_json(image_id: str) -> Any:
        refused = None if not web.login_required_for_search else refuse(VIEWER)
        if refused is not None:
            return refused
        response = jsonify(status_of(image_id))
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/ingest/<image_id>")
    def ingest_page(image_id: str) -> Any:
        refused = None if not web.login_required_for_search else refuse(VIEWER)
        if refused is not None:
            return refused
        return render_template("ingest.html", state=status_of(image_id))

    # -- review and corrections ----------------------------------------------------------------

    @app.get("/review")
    @needs(REVIEWER)
    def review_queue() -> str:
        before = None
        cursor = request.args.get("before", "")
        if cursor:
            at, _, last = cursor.partition(":")
            if not (at.isdigit() and HEX64.match(last)):
                abort(400, "before: <tagged_at ms>:<id>")
            before = (int(at), last)
        page = view.review_page(web.page_size, before)
        following = f"{page[-1].tagged_at}:{page[-1].id}" if len(page) == web.page_size else None
        return render_template(
            "review.html",
            items=page,
            total=view.review_count(),
            classes=classes(),
            following=following,
        )

    @app.get("/review/<image_id>/original")
    @needs(REVIEWER)
    def review_original(image_id: str) -> Response:
        item = view.reviewed(image_id) if HEX64.match(image_id) else None
        data = archived(image_id, item.ingested_at) if item else None
        return original_image(data, "The raw archive does not hold this image (yet).")

    @app.post("/label/<image_id>")
    @needs(REVIEWER)
    def correct(image_id: str) -> Any:
        if not HEX64.match(image_id):
            abort(404, "An image id is 64 lowercase hexadecimal digits.")
        label = (request.form.get("label") or "").strip()
        if not LABEL.match(label):
            return error_page(400, "A label is 1-64 printable characters.")
        user = current_user()
        assert user is not None
        doc = fetch(image_id)
        reviewed: Reviewed | None = None if doc is not None else view.reviewed(image_id)
        if doc is None and reviewed is None:
            abort(404, "Neither Solr nor the review queue has this image.")
        ingested = (
            _doc_ms(doc.get("ingested_at")) if doc else reviewed.ingested_at if reviewed else None
        )
        source = str(doc.get("source") or "") if doc else reviewed.source if reviewed else ""
        previous = (doc.get("label") if doc else reviewed.label if reviewed else None) or None
        view.correct(image_id, label, user.name, previous, ingested, source)
        log.info("correction %s -> %r by %s", image_id[:12], label, user.name)
        if doc is not None:
            labels.set_label(image_id, label)  # shown on the image page at once
        resend_pending()
        target = "/review" if request.form.get("back") == "review" else f"/ingest/{image_id}"
        return redirect(target)

    def resend_pending() -> None:
        """Send each image corrected and not sent again yet, with its label: the archive keeps
        the labelled copy, which is what `imagetag retrain` reads labels from. An image whose
        bytes the archive does not hold yet (it archives every 10 s) waits for a later pass."""
        for c in view.pending_corrections():
            data = archived(c.id, c.ingested_at)
            if data is None:
                view.note(c.seq, "waiting for the archive to hold the bytes")
                continue
            try:
                sender.send(
                    data,
                    c.label,
                    {"corrected_by": c.user, "corrected_at": iso(c.at) or ""},
                    c.source or f"urn:sha256:{c.id}",
                )
            except ServiceError as exc:
                view.note(c.seq, f"not sent: {exc.reason}")
                continue
            view.mark_resent(c.seq, "sent again with its label")

    app.extensions["imagetag.resend_pending"] = resend_pending


def original_image(data: bytes | None, missing: str) -> Response:
    """An image's original bytes from the archive, served as the type its magic bytes say (404
    with ``missing`` when there are none, or when they are no supported image), in a sandbox."""
    from imagetag.formats import CONTENT_TYPES, sniff_format

    if data is None:
        abort(404, missing)
    fmt = sniff_format(data)
    if fmt is None:
        abort(404, "The archived bytes are not an image of a supported format.")
    response = Response(data, mimetype=CONTENT_TYPES[fmt])
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


@dataclass(frozen=True)
class _Limits:
    """The upload limits in the shape ``imagetag.images.read_header`` checks."""

    max_bytes: int
    max_pixels: int
    max_side: int


def _refused(name: str, reason: str, detail: str) -> dict[str, Any]:
    return {"name": name, "id": None, "reason": reason, "detail": detail}


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _safe_next(target: str | None) -> str:
    """A same-site path to go to after login (never another site: browsers read ``/\\host``
    as ``//host``, and drop tabs and newlines, so none of those pass)."""
    if not target or any(c in target for c in "\\\t\r\n"):
        return "/"
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _doc_ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None
