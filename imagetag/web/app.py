"""The Flask application of ``imagetag web``: server-rendered pages over Solr.

- ``/``: search (tag facets, the confidence slider on the selected tags' vote fractions,
  filters, sort, pages of thumbnails); the URL carries the whole query;
- ``/image/<id>``: one image, its votes, fields, colours, similar images (kNN on ``vector``)
  and near-duplicates (pHash bands, :mod:`imagetag.web.queries`); ``/image/<id>/original``
  its bytes from the raw archive when they are there;
- ``/example`` (POST): search by an uploaded example, tagged in-process with ``tag_batch``
  and the current model, never ingested;
- ``/status``: what ``imagetag status`` shows, and the model's plots (``/model/<v>/<plot>``).

Every query is built by :mod:`imagetag.web.queries`. Errors are pages: a bad parameter is a
400 saying which, an unknown image a 404, an upload too large a 413 (refused from its
``Content-Length``, before its body is read), Solr unreachable a 503 naming it and its address,
anything else a 500 whose traceback goes to the log only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, abort, redirect, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from imagetag.documents import project_vector, vote_field
from imagetag.errors import ServiceError
from imagetag.settings import ImageLimits, Settings
from imagetag.web import queries, routes
from imagetag.web.auth import UserStore, secret_key
from imagetag.web.backend import PLOTS, ModelSource, Searcher, SolrSearcher, archived_original
from imagetag.web.ingest import LabelWriter, ProducerSender, Sender, SolrLabelWriter, iso
from imagetag.web.queries import QueryError, SearchQuery
from imagetag.web.review import ViewStore

log = logging.getLogger(__name__)

# What a multipart body adds around the file (boundaries, headers, the other fields).
MULTIPART_SLACK = 64 * 1024
_ERROR_TITLES = {
    400: "Bad request",
    401: "Log in first",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Upload too large",
    429: "Too many attempts",
    500: "Internal error",
    503: "Service unavailable",
}


@dataclass(frozen=True)
class Tile:
    """One thumbnail of a grid: the image, the tag and vote shown under it."""

    id: str
    thumb: str | None
    caption: str
    value: float | None
    label: str | None
    detail: str = ""

    @property
    def mismatch(self) -> bool:
        return bool(self.label) and self.label != self.caption


def _thumb(doc: dict[str, Any]) -> str | None:
    value = doc.get("thumbnail")
    return f"data:image/jpeg;base64,{value}" if isinstance(value, str) and value else None


def tile(doc: dict[str, Any], selected: tuple[str, ...] = (), detail: str = "") -> Tile:
    """The tile of a Solr document: the first selected tag it has, with that tag's own vote
    fraction; else its top tag and confidence."""
    tags = [str(t) for t in doc.get("tags", [])]
    for tag in selected:
        if tag in tags:
            return Tile(
                doc["id"], _thumb(doc), tag, doc.get(vote_field(tag)), doc.get("label"), detail
            )
    return Tile(
        doc["id"],
        _thumb(doc),
        str(doc.get("top_tag", "")),
        doc.get("confidence"),
        doc.get("label"),
        detail,
    )


def _pairs(values: list[Any]) -> list[tuple[str, int]]:
    """Solr's flat facet list ``[value, count, value, count, ...]`` as pairs."""
    return [(str(values[i]), int(values[i + 1])) for i in range(0, len(values) - 1, 2)]


def votes_of(doc: dict[str, Any], classes: list[str]) -> list[tuple[str, float]]:
    """(class, vote fraction) of every ``vote_*`` field of ``doc``, most voted first; a field
    is named by the model's class of that slug when known."""
    names = {vote_field(c): c for c in classes}
    votes = [
        (names.get(key, key.removeprefix("vote_")), float(value))
        for key, value in doc.items()
        if key.startswith("vote_") and isinstance(value, int | float)
    ]
    return sorted(votes, key=lambda item: (-item[1], item[0]))


def create_app(
    settings: Settings,
    *,
    searcher: Searcher | None = None,
    models: ModelSource | None = None,
    status: Callable[[], Any] | None = None,
    users: UserStore | None = None,
    view: ViewStore | None = None,
    sender: Sender | None = None,
    labels: LabelWriter | None = None,
) -> Flask:
    """The app over ``settings`` (Solr, the model store, the web section). ``searcher``,
    ``models`` and ``status`` replace the real Solr, model store and ``imagetag.status.gather``
    (the unit tests give fakes); ``sender`` and ``labels`` the Kafka producer and the Solr
    label writer. The view's feeder (:class:`imagetag.web.review.ViewFeeder`) is started by
    ``imagetag web``, not here."""
    app = Flask(__name__)
    web = settings.web
    app.config["MAX_CONTENT_LENGTH"] = web.max_upload_bytes + MULTIPART_SLACK
    app.secret_key = secret_key(
        web.secret_key.get_secret_value() if web.secret_key else None, web.users_file
    )
    app.config.update(
        SESSION_COOKIE_NAME="imagetag_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=web.secure_cookies,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=web.session_hours),
    )
    upload_body = web.max_upload_files * min(web.max_upload_bytes, settings.limits.max_bytes)

    @app.before_request
    def body_limit() -> None:
        if request.path == "/upload":  # many files: each is checked on its own
            request.max_content_length = upload_body + MULTIPART_SLACK

    solr: Searcher = searcher or SolrSearcher(settings)
    model_source = models or ModelSource(settings.model_store)
    threshold = settings.vote_threshold
    limits = ImageLimits(
        max_bytes=web.max_upload_bytes,
        max_pixels=web.max_upload_pixels,
        max_side=web.max_upload_side,
    )
    tagging = threading.Lock()  # one upload tagged at a time: bounded CPU and memory

    def gather_status() -> Any:
        from imagetag.status import StatusOptions, gather

        return gather(settings, StatusOptions(timeout_s=3.0))

    status_source = status or gather_status

    def search_url(query: SearchQuery) -> str:
        args = query.url_args()
        return "/" + ("?" + urlencode(args) if args else "")

    app.jinja_env.globals.update(
        search_url=search_url,
        palette_names=queries.COLOR_NAMES,
        threshold=threshold,
        solr_address=settings.solr.url,
    )

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'",
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def error_page(code: int, message: str, detail: str = "") -> tuple[str, int]:
        title = _ERROR_TITLES.get(code, "Error")
        return render_template(
            "error.html", code=code, title=title, message=message, detail=detail
        ), code

    @app.errorhandler(QueryError)
    def bad_query(exc: QueryError) -> tuple[str, int]:
        return error_page(400, "This query cannot be run.", str(exc))

    @app.errorhandler(ServiceError)
    def service_down(exc: ServiceError) -> tuple[str, int]:
        log.warning("%s", exc)
        return error_page(
            503,
            f"{exc.service.capitalize()} at {exc.address} is not answering.",
            exc.reason,
        )

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[str, int]:
        return error_page(
            413, f"An upload may have at most {web.max_upload_bytes:,} bytes.", "refused unread"
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        code = exc.code or 500
        return error_page(code, exc.description or _ERROR_TITLES.get(code, "Error"))

    @app.errorhandler(Exception)
    def internal(exc: Exception) -> tuple[str, int]:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_page(500, "Something went wrong on our side; the log has the details.")

    # -- search ----------------------------------------------------------------------------

    @app.get("/")
    def search() -> str:
        query = SearchQuery.from_args(request.args.to_dict(flat=False))
        classes = model_source.classes()
        built = queries.search_request(
            query,
            threshold=threshold,
            page_size=web.page_size,
            max_results=web.max_results,
            classes=classes,
        )
        started = time.monotonic()
        answer = solr.select("*:*", built.params)
        took_ms = (time.monotonic() - started) * 1000
        response = answer.get("response", {})
        hits = int(response.get("numFound", 0))
        facets = answer.get("facet_counts", {})
        fields = facets.get("facet_fields", {})
        at_slider = {k: int(v) for k, v in facets.get("facet_queries", {}).items()}
        tag_counts = dict(_pairs(fields.get("tags", [])))
        names = list(dict.fromkeys([*classes, *tag_counts, *query.tags]))
        tag_facets = []
        for name in names:
            key = vote_field(name)
            count = at_slider.get(key, tag_counts.get(name, 0))
            if built.facet_keys.get(key) not in (None, name):
                count = tag_counts.get(name, 0)
            tag_facets.append((name, count, name in query.tags))
        pages = max(1, min(-(-hits // web.page_size), -(-web.max_results // web.page_size)))
        return render_template(
            "search.html",
            query=query,
            hits=hits,
            took_ms=took_ms,
            tiles=[tile(doc, query.tags) for doc in response.get("docs", [])],
            tag_facets=tag_facets,
            min_value=built.min_confidence,
            models=_pairs(fields.get("model_version", [])),
            formats=_pairs(fields.get("format", [])),
            labels=_pairs(fields.get("label", [])),
            palette=queries.PALETTE,
            sorts=queries.SORTS,
            page=query.page,
            pages=pages,
            limits=limits,
        )

    # -- one image ---------------------------------------------------------------------------

    def fetch(image_id: str) -> dict[str, Any]:
        try:
            params = queries.image_request(image_id)
        except QueryError:
            abort(404, "There is no image with this id (an id is 64 hexadecimal digits).")
        docs = solr.select("*:*", params).get("response", {}).get("docs", [])
        if not docs:
            abort(404, "No indexed image has this id.")
        return dict(docs[0])

    def similar(vector: list[float] | None, exclude: str | None) -> list[Tile]:
        if not vector:
            return []
        q, params = queries.knn_request(vector, web.similar, exclude)
        docs = solr.select(q, params).get("response", {}).get("docs", [])
        return [
            tile(d, detail=f"similarity {float(d.get('score', 0)):.3f}")
            for d in docs
            if d["id"] != exclude
        ][: web.similar]

    def near_duplicates(doc: dict[str, Any]) -> tuple[list[Tile], int, bool]:
        """(tiles nearest first, candidates verified, whether the candidates were capped)."""
        phash = doc.get("phash")
        if not isinstance(phash, str) or queries.phash_bands(phash) is None:
            return [], 0, False
        distance, cap = web.near_duplicate_distance, web.near_duplicate_candidates
        q, params = queries.near_duplicate_request(phash, distance, cap, exclude=doc["id"])
        answer = solr.select(q, params).get("response", {})
        candidates = answer.get("docs", [])
        near = sorted(
            (queries.hamming(phash, c["phash"]), c["id"])
            for c in candidates
            if isinstance(c.get("phash"), str) and queries.phash_bands(c["phash"])
        )
        near = [(d, i) for d, i in near if d <= distance][: web.similar]
        if not near:
            return [], len(candidates), int(answer.get("numFound", 0)) > len(candidates)
        found = solr.select("*:*", queries.ids_request([i for _, i in near]))
        by_id = {d["id"]: d for d in found.get("response", {}).get("docs", [])}
        tiles = [
            tile(by_id[i], detail=f"{d} bit{'s' if d != 1 else ''} apart")
            for d, i in near
            if i in by_id
        ]
        return tiles, len(candidates), int(answer.get("numFound", 0)) > len(candidates)

    @app.get("/image/<image_id>")
    def image(image_id: str) -> str:
        doc = fetch(image_id)
        near, checked, capped = near_duplicates(doc)
        colors = [str(c) for c in doc.get("colors", [])]
        return render_template(
            "image.html",
            doc=doc,
            thumb=_thumb(doc),
            votes=votes_of(doc, model_source.classes()),
            colors=[(c, queries.nearest_palette_color(c)) for c in colors],
            similar=similar(doc.get("vector"), doc["id"]),
            near=near,
            near_checked=checked,
            near_capped=capped,
            distance=web.near_duplicate_distance,
        )

    @app.get("/image/<image_id>/original")
    def original(image_id: str) -> Response:
        doc = fetch(image_id)
        data = archived_original(settings.archive_dir, doc["id"], doc.get("ingested_at"))
        return routes.original_image(data, "The raw archive does not hold this image's bytes.")

    # -- search by example -----------------------------------------------------------------

    @app.get("/example")
    def example_form() -> Any:
        return redirect("/")

    @app.post("/example")
    def example() -> Any:
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            return error_page(400, "Choose an image file to search with.")
        data = upload.read(web.max_upload_bytes + 1)
        if len(data) > web.max_upload_bytes:
            return error_page(413, f"An upload may have at most {web.max_upload_bytes:,} bytes.")
        from imagetag.images import ImageRejected, read_header

        try:  # magic bytes, then the header's size against the limits: nothing decoded yet
            header = read_header(data, limits)
        except ImageRejected as exc:
            return error_page(
                400, "This file cannot be searched with.", f"{exc.reason}: {exc.detail}"
            )
        import pandas as pd

        from imagetag.bundle import BundleError
        from imagetag.formats import content_type
        from imagetag.tagging import tag_batch

        try:
            model = model_source.bundle()
        except BundleError as exc:
            return error_page(503, "There is no model to tag the example with.", str(exc))
        image_id = hashlib.sha256(data).hexdigest()
        batch = pd.DataFrame(
            [
                {
                    "id": image_id,
                    "image": data,
                    "content_type": content_type(header.format),
                    "source": "web://example",
                    "produced_at": int(time.time() * 1000),
                    "label": None,
                    "metadata": None,
                }
            ]
        )
        started = time.monotonic()
        with tagging:
            tagged, review, dead = tag_batch(batch, model, threshold=threshold, limits=limits)
        took_ms = (time.monotonic() - started) * 1000
        if len(dead):
            row = dead.iloc[0]
            return error_page(
                400, "This image cannot be tagged.", f"{row['reason']}: {row['detail']}"
            )
        row = (tagged if len(tagged) else review).iloc[0].to_dict()
        vector = project_vector(row["vector"]) if row.get("vector") is not None else None
        nearest = similar(vector, None)
        votes = sorted(
            ((str(k), float(v)) for k, v in dict(row["votes"]).items()),
            key=lambda item: (-item[1], item[0]),
        )
        return render_template(
            "example.html",
            name=upload.filename,
            image_id=image_id,
            thumb="data:image/jpeg;base64," + str(row["thumbnail"])
            if row.get("thumbnail")
            else None,
            tags=[str(t) for t in row["tags"]],
            top_tag=str(row["top_tag"]),
            confidence=float(row["confidence"]),
            votes=votes,
            model_version=model.version,
            width=int(row["width"]),
            height=int(row["height"]),
            fmt=str(row["format"]),
            nearest=nearest,
            indexed=any(t.id == image_id for t in nearest),
            took_ms=took_ms,
        )

    # -- status ------------------------------------------------------------------------------

    @app.get("/status")
    def status_page() -> str:
        state = status_source()
        data = state.as_dict()
        version = data["model"].get("current")
        return render_template(
            "status.html",
            status=data,
            plots=list(PLOTS) if version else [],
            version=version,
        )

    @app.get("/model/<version>/<name>")
    def model_plot(version: str, name: str) -> Response:
        if not (len(version) == 5 and version[0] == "v" and version[1:].isdigit()):
            abort(404, "No such model version.")
        png = model_source.plot(version, name)
        if png is None:
            abort(404, "This model has no such plot.")
        response = Response(png, mimetype="image/png")
        response.headers["Cache-Control"] = "max-age=300"
        return response

    def find(image_id: str) -> dict[str, Any] | None:
        try:
            params = queries.image_request(image_id)
        except QueryError:
            return None
        docs = solr.select("*:*", params).get("response", {}).get("docs", [])
        return dict(docs[0]) if docs else None

    def archived(image_id: str, ingested_ms: int | None) -> bytes | None:
        return archived_original(settings.archive_dir, image_id, iso(ingested_ms))

    view_store = view or ViewStore(web.view_db)
    app.extensions["imagetag.view"] = view_store
    routes.install(
        app,
        settings,
        users=users or UserStore(web.users_file),
        view=view_store,
        sender=sender or ProducerSender(settings),
        labels=labels or SolrLabelWriter(settings),
        fetch=find,
        classes=model_source.classes,
        error_page=error_page,
        archived=archived,
    )

    @app.get("/healthz")
    def health() -> Response:
        return Response("ok\n", mimetype="text/plain")

    return app
