"""Run the server: uvicorn for REST (and the page), gRPC on the same event loop, one process or ``workers`` of them.

SIGTERM or Ctrl-C stops taking new connections, answers the requests already in (the batcher runs what is queued),
then exits.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable

import uvicorn

from finechain.serve.grpc_server import grpc_lifespan
from finechain.serve.metrics import Metrics
from finechain.serve.rest import configure_logging, create_app
from finechain.serve.service import ChainService
from finechain.serve.settings import ServeSettings


def _config(settings: ServeSettings, app: object, **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,  # the app writes its own JSON access log
        timeout_graceful_shutdown=int(settings.timeout_ms / 1000) + 1,
        lifespan="on",
        **extra,  # type: ignore[arg-type]
    )


async def _serve_one(service: ChainService, announce: Callable[[str], None]) -> None:
    settings = service.settings
    app = create_app(settings, service, extra_lifespan=grpc_lifespan(settings) if settings.grpc_port is not None else None)
    server = uvicorn.Server(_config(settings, app))
    serving = asyncio.get_running_loop().create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        grpc = f", gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port is not None else ""
        announce(f"serving {settings.chain} on http://{settings.host}:{port}{grpc} (page: /, API: /docs)")
    await serving
    if not server.started:  # startup failed (the chain did not load, the port is taken): uvicorn logged why
        raise SystemExit(1)


def serve(settings: ServeSettings, announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> None:
    """Serve ``settings.chain`` until stopped. The chain is loaded first, in this process: one that does not load is a
    one-line :class:`~finechain.errors.FinechainError` before any port opens.

    Example:
        >>> serve(ServeSettings(chain=Path("demo-chain"), port=8000))  # doctest: +SKIP
    """
    configure_logging(settings)
    service = ChainService(settings, Metrics())
    service.load()
    if settings.workers == 1:
        asyncio.run(_serve_one(service, announce))
        return
    del service  # each worker loads its own
    # several processes: each worker builds its own app (chain, batcher) from the environment; metrics are added up
    os.environ["FINECHAIN_SERVE_SETTINGS"] = settings.model_dump_json()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="finechain-metrics-"))
    announce(f"serving {settings.chain} on http://{settings.host}:{settings.port} with {settings.workers} workers")
    uvicorn.run(
        "finechain.serve.rest:app_from_environment",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.timeout_ms / 1000) + 1,
    )
