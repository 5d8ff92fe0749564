"""The REST transport (FastAPI): routes, the JSON error format, limits and API keys, access logs, metrics, the page.

Every client mistake is a JSON 4xx ``{"error": {"status", "code", "message", "field"?, "fix"?}}``; nothing a client
sends can cause a 5xx or a stack trace in a response (a bug is logged with its traceback and answered with a bare 500).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from finechain.serve.metrics import Metrics
from finechain.serve.service import ChainService, ClientError
from finechain.serve.settings import ServeSettings
from finechain.spec.names import closest_name

log = logging.getLogger("finechain.serve")
access = logging.getLogger("finechain.serve.access")
OPEN_ROUTES = {"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"}  # the rest needs the API key, when one is set
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


class PredictRequest(BaseModel):
    """Texts and the tasks to answer for them."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] | list[list[str]] = Field(
        min_length=1, description="raw texts, or word lists (pre-split input for tagging)", examples=[["where is my card?"]]
    )
    tasks: list[str] | None = Field(None, min_length=1, description="tasks to answer (default: all)")
    timeout_ms: float | None = Field(
        None,
        ge=1,
        description="answer within this many milliseconds, or get a 408 (default: the server's deadline, past which it answers 503)",
    )


class FlowRequest(BaseModel):
    """Texts to run through a flow."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="raw texts", examples=[["play some jazz"]])
    timeout_ms: float | None = Field(None, ge=1, description="answer within this many milliseconds, or get a 408")


BODIES: dict[str, type[BaseModel]] = {"/v1/predict": PredictRequest, "/v1/flows/{name}": FlowRequest}  # route -> its body


class ClassAnswer(BaseModel):
    """A classification task's answer."""

    label: str
    score: float
    scores: dict[str, float]


class LabelsAnswer(BaseModel):
    """A multi-label task's answer."""

    labels: list[str]
    scores: dict[str, float]


class ValueAnswer(BaseModel):
    """A regression task's answer."""

    value: float


class EntityAnswer(BaseModel):
    """One entity: character offsets for raw text, word indices for word lists."""

    type: str
    score: float
    text: str | None
    start: int | None = None
    end: int | None = None
    first_word: int | None = None
    last_word: int | None = None


class EntitiesAnswer(BaseModel):
    """A tagging task's answer."""

    entities: list[EntityAnswer]
    tags: list[str]


class Timings(BaseModel):
    """Where the request's time went (milliseconds), and how many rows and requests its forward pass held."""

    prepare_ms: float
    queue_ms: float
    forward_ms: float
    decode_ms: float
    total_ms: float
    batch_rows: int
    batch_requests: int


class PredictResponse(BaseModel):
    """Per text, each requested task's answer."""

    predictions: list[dict[str, ClassAnswer | LabelsAnswer | ValueAnswer | EntitiesAnswer]]
    timings: Timings
    version: str


class ErrorBody(BaseModel):
    """What a refused request gets."""

    status: int
    code: str
    message: str
    field: str | None = None
    fix: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``."""

    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "missing or wrong API key",
        408: "not answered within the request's own timeout_ms",
        413: "too many texts, a text or a body too large",
        422: "not a valid request (the field says which part)",
        429: "the queue is full: retry after Retry-After seconds",
        503: "still loading, or the server's own deadline passed (busy)",
    }.items()
}


SCHEMA = "see the schema at /openapi.json"


def validation_error(errors: Sequence[Mapping[str, Any]], fields: Sequence[str] = ()) -> tuple[str, str, str | None, str]:
    """``(code, message, field, fix)`` for a request body that does not fit its model (whose ``fields`` are given),
    from pydantic's errors: a misspelt field is named with its likely meaning; JSON that does not parse says where and
    why; otherwise the most specific error, where each alternative of a field (``texts``: strings or word lists)
    failed, and its field without pydantic's alternative tags (``texts[0][1]``).

    Example:
        >>> validation_error([{"loc": ("body", "texts"), "msg": "Field required", "type": "missing"},
        ...                   {"loc": ("body", "text"), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}],
        ...                  ["texts", "tasks"])
        ('invalid_request', "unknown field 'text'", 'text', "did you mean 'texts'? (see the schema at /openapi.json)")
        >>> not_a_string = {"msg": "Input should be a valid string", "type": "string_type"}
        >>> validation_error([{"loc": ("body", "texts", "list[str]", 0), **not_a_string},
        ...                   {"loc": ("body", "texts", "list[list[str]]", 0, 1), **not_a_string}])
        ('invalid_request', 'Input should be a valid string', 'texts[0][1]', 'see the schema at /openapi.json')
    """
    if not errors:
        return "invalid_request", "invalid request", None, SCHEMA

    def field(error: Mapping[str, Any]) -> str | None:
        parts = [str(p) for p in error.get("loc", ()) if p != "body" and not (isinstance(p, str) and "[" in p)]  # no union tags
        return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".") or None

    for error in errors:
        if error.get("type") == "json_invalid":  # its loc holds the character where parsing stopped
            at = [p for p in error.get("loc", ()) if isinstance(p, int)]
            why = str((error.get("ctx") or {}).get("error", "")) or "not JSON"
            return "invalid_json", f"invalid JSON{f' at character {at[0]}' if at else ''}: {why}", None, 'send {"texts": [...]}'
        if error.get("type") == "missing" and field(error) is None:
            return "invalid_request", "the request has no body", None, 'send {"texts": [...]}'
        if error.get("type") == "extra_forbidden" and (extra := field(error)):
            meant = closest_name(extra, fields)
            fix = f"did you mean '{meant}'? ({SCHEMA})" if meant else f"the fields are {', '.join(fields)} ({SCHEMA})"
            return "invalid_request", f"unknown field '{extra}'", extra, fix if fields else SCHEMA
    top = errors[0].get("loc", ())[:2]  # the first failing field; among its errors, the deepest (the most specific)
    first = max((e for e in errors if e.get("loc", ())[:2] == top), key=lambda e: len(e.get("loc", ())))
    return "invalid_request", str(first.get("msg", "invalid request")), field(first), SCHEMA


def _error(status: int, code: str, message: str, field: str | None = None, fix: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse(ClientError(status, code, message, field, fix).body(), status_code=status, headers=headers or None)


class Guard:
    """ASGI middleware before any route: a request id, the API key, the body-size limit, one JSON access-log line and
    the request metrics for every request (a refused one too)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    def _authorised(self, scope: Scope) -> bool:
        key = self.settings.api_key
        if key is None or scope["path"] in OPEN_ROUTES:
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), key.encode())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [500]
        route = (
            scope["path"]
            if scope["path"] in {"/", "/healthz", "/readyz", "/metrics", "/v1/predict", "/v1/tasks", "/v1/reload"}
            else "other"
        )

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        request_id = uuid.uuid4().hex[:16]
        limit = self.settings.max_body_bytes
        declared = next((int(v) for k, v in scope.get("headers", []) if k == b"content-length" and v.isdigit()), 0)
        try:
            if not self._authorised(scope):
                await _error(
                    401, "unauthorized", "missing or wrong API key", fix="send Authorization: Bearer KEY", **{"WWW-Authenticate": "Bearer"}
                )(scope, receive, sending)
                return
            too_large = _error(413, "body_too_large", f"the body is over {limit} bytes", fix="send fewer or shorter texts")
            if declared > limit:
                await too_large(scope, receive, sending)
                return
            body, size, more = [], 0, True  # the body first (at most `limit` bytes, also when sent in chunks), then the app
            while more:
                message = await receive()
                body.append(message)
                if message["type"] != "http.request":
                    break
                size, more = size + len(message.get("body", b"")), message.get("more_body", False)
                if size > limit:
                    await too_large(scope, receive, sending)
                    return
            replay = iter(body)

            async def receiving() -> dict[str, Any]:
                return next(replay, None) or await receive()

            await self.app(scope, receiving, sending)
        finally:
            seconds = time.monotonic() - started
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status[0])).inc()
            self.metrics.request_seconds.labels(route=route).observe(seconds)
            if self.settings.access_log:
                record = {
                    "time": round(time.time(), 3),
                    "id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status[0],
                }
                record |= {"ms": round(seconds * 1000, 2), "client": (scope.get("client") or ["-"])[0]}
                access.info(json.dumps(record))


def create_app(
    settings: ServeSettings, service: ChainService | None = None, extra_lifespan: Callable[[ChainService], Any] | None = None
) -> FastAPI:
    """The FastAPI app serving ``settings.chain`` (through ``service``, if one was made and loaded already);
    ``extra_lifespan(service)`` (an async context manager factory) runs alongside, e.g. the gRPC server on the same
    batcher.

    Example:
        >>> app = create_app(ServeSettings(chain=Path("demo-chain")))  # doctest: +SKIP
    """
    service = service or ChainService(settings, Metrics())
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        if extra_lifespan is None:
            yield
        else:
            async with extra_lifespan(service):
                yield
        await service.stop()

    app = FastAPI(
        title="finechain",
        summary="One pretrained encoder, many tasks: every task's answer for a text in one trunk pass.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service, app.state.metrics = service, metrics

    @app.exception_handler(ClientError)
    async def client_error(request: Request, error: ClientError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status in (408, 429, 503) else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        body = BODIES.get(getattr(request.scope.get("route"), "path", ""))
        return _error(422, *validation_error(error.errors(), list(body.model_fields) if body else []))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error while answering %s", request.url.path)
        return _error(500, "internal", "internal error (logged on the server)")

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, summary="Answer tasks for texts")
    async def predict(body: PredictRequest) -> JSONResponse:
        """Every requested task's answer for every text: one trunk pass per text, shared with other clients' texts."""
        answers, timings = await service.predict(body.texts, body.tasks, body.timeout_ms)
        version = service.current.version if service.current else ""
        predictions = [{name: answer.to_dict() for name, answer in row.items()} for row in answers]
        return JSONResponse({"predictions": predictions, "timings": timings, "version": version})

    @app.post("/v1/flows/{name}", responses=ERRORS, summary="Run one of the chain's flows on texts")
    async def flow(name: str, body: FlowRequest) -> JSONResponse:
        """Each text through the flow: every stage's answer, the path taken, each stage's milliseconds."""
        results, total_ms = await service.run_flow(name, body.texts, body.timeout_ms)
        version = service.current.version if service.current else ""
        return JSONResponse({"results": [r.to_dict() for r in results], "total_ms": total_ms, "version": version})

    @app.get("/v1/flows", responses=ERRORS, summary="The chain's flows")
    async def flows() -> JSONResponse:
        """Each flow's name and stages, as declared."""
        loaded = service.current
        if loaded is None:
            raise ClientError(503, "not_ready", "the chain is still loading", fix="retry in a moment")
        return JSONResponse({"flows": [f.model_dump(mode="json", exclude_defaults=True) for f in loaded.flows.values()]})

    @app.get("/v1/tasks", responses=ERRORS, summary="The chain's tasks")
    async def tasks() -> JSONResponse:
        """Names, types, labels and validation/test metrics of every task; the backbone and the loaded version."""
        loaded = service.current
        if loaded is None:
            raise ClientError(503, "not_ready", "the chain is still loading", fix="retry in a moment")
        about = loaded.about | {"version": loaded.version, "loaded_at": loaded.loaded_at}
        return JSONResponse({"tasks": loaded.describe(), "model": about})

    @app.post("/v1/reload", responses=ERRORS, summary="Load the chain folder's current version")
    async def reload() -> JSONResponse:
        """Load the folder again and swap it in without dropping a request; on failure the old version keeps serving."""
        loaded, error = await service.reload()
        if not loaded:
            return _error(
                422, "reload_failed", error or "the new version did not load", fix="fix the chain folder; the old version still serves"
            )
        return JSONResponse({"status": "reloaded", "version": service.current.version if service.current else ""})

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="The chain is loaded and warmed up", responses={503: {"description": "still loading"}})
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "version": service.current.version if service.current else "",
                "last_reload_error": service.last_reload_error,
            }
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    page = resources.files("finechain.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_middleware(Guard, settings=settings, metrics=metrics)
    if settings.cors_origins:  # outermost: preflights are answered before the key is asked for, and errors carry the headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    return app


def app_from_environment() -> FastAPI:
    """The app for one worker of ``finechain serve --workers N``: its settings come in ``FINECHAIN_SERVE_SETTINGS``."""
    from finechain.serve.grpc_server import grpc_lifespan

    settings = ServeSettings.model_validate_json(os.environ["FINECHAIN_SERVE_SETTINGS"])
    configure_logging(settings)
    return create_app(settings, extra_lifespan=grpc_lifespan(settings) if settings.grpc_port is not None else None)


def configure_logging(settings: ServeSettings) -> None:
    """Plain lines on stderr: the access log's JSON records, and the server's own events."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("finechain.serve", "finechain.serve.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
