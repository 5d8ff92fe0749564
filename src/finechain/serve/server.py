"""Run the server: uvicorn for REST (and the page), gRPC on the same event loop, one process or ``workers`` of them.

SIGTERM or Ctrl-C stops taking new connections, answers the requests already in (the batcher runs what is queued),
then exits. With several workers the first process only hands connections to them: it checks that the chain loads in a
child process and never imports PyTorch or holds a model itself (half a gigabyte saved per server).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import uvicorn

from finechain.errors import FinechainError
from finechain.serve.settings import ServeSettings

if TYPE_CHECKING:
    from finechain.serve.service import ChainService

ONEDNN_CACHE = 16  # kernels oneDNN keeps compiled, per process (see serve)


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


def check_free(host: str, port: int | None, option: str) -> None:
    """A one-line :class:`~finechain.errors.FinechainError` when ``port`` on ``host`` cannot be listened on (another
    server has it, or it needs privileges), checked before the server starts: uvicorn would log it and exit from
    inside its event loop. Port 0 (any free port) and no port are always fine.

    Example:
        >>> check_free("127.0.0.1", 0, "--port")  # nothing to check: the system picks a free port
    """
    if not port:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: a closed one's port is free
            probe.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise FinechainError(f"port {port} on {host} is taken", fix=f"choose another {option}, or stop what listens there") from None
        why = error.strerror or str(error)
        raise FinechainError(f"cannot listen on {host}:{port} ({why})", fix=f"check --host, or choose another {option}") from None


async def _until_stopped(server: uvicorn.Server) -> None:
    """``server.serve()``; a failed startup (uvicorn logs why, then exits from inside the loop) ends it quietly."""
    with contextlib.suppress(SystemExit):
        await server.serve()


async def _serve_one(service: ChainService, announce: Callable[[str], None]) -> None:
    from finechain.serve.grpc_server import grpc_lifespan
    from finechain.serve.rest import create_app

    settings = service.settings
    app = create_app(settings, service, extra_lifespan=grpc_lifespan(settings) if settings.grpc_port is not None else None)
    server = uvicorn.Server(_config(settings, app))
    serving = asyncio.get_running_loop().create_task(_until_stopped(server))
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
    """Serve ``settings.chain`` until stopped. The chain is loaded first (with several workers, in a child process): one
    that does not load is a one-line :class:`~finechain.errors.FinechainError` before any port opens.

    Example:
        >>> serve(ServeSettings(chain=Path("demo-chain"), port=8000))  # doctest: +SKIP
    """
    # oneDNN keeps a compiled kernel per input shape it has seen (1,024 by default); a server sees new batch and length
    # shapes for hours, so its memory grew with every round of load. 16 levelled off at the same speed (within noise).
    # Read when PyTorch first runs a kernel: set before this process, or a worker, loads a chain; a user's value wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))
    check_free(settings.host, settings.port, "--port")
    check_free(settings.host, settings.grpc_port, "--grpc-port")
    if settings.workers == 1:
        asyncio.run(_serve_one(_loaded(settings), announce))
        return
    try:  # checked in a child process: each worker loads its own, and this process only hands out connections
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            problem = child.submit(_load_problem, settings.model_dump_json()).result()
    except BrokenProcessPool:
        problem = f"{settings.chain}: the process loading the chain died (out of memory?)"
    if problem is not None:
        raise FinechainError(problem)
    # several processes: each worker builds its own app (chain, batcher) from the environment; metrics are added up
    os.environ["FINECHAIN_SERVE_SETTINGS"] = settings.model_dump_json()
    # the workers' metric files: a folder of the user's is kept, one made here is removed when the server stops
    made = None if "PROMETHEUS_MULTIPROC_DIR" in os.environ else tempfile.mkdtemp(prefix="finechain-metrics-")
    if made is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    announce(f"serving {settings.chain} on http://{settings.host}:{settings.port} with {settings.workers} workers")
    try:
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
    finally:
        if made is not None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            shutil.rmtree(made, ignore_errors=True)


def _loaded(settings: ServeSettings) -> ChainService:
    """The service with its chain loaded and warmed up (a chain that does not load raises its one-line error)."""
    from finechain.serve.metrics import Metrics
    from finechain.serve.rest import configure_logging
    from finechain.serve.service import ChainService

    configure_logging(settings)
    service = ChainService(settings, Metrics())
    service.load()
    return service


def _load_problem(settings_json: str) -> str | None:
    """In a child process: whether the chain loads; its one-line error if not."""
    try:
        _loaded(ServeSettings.model_validate_json(settings_json))
    except FinechainError as error:
        return str(error)
    return None
