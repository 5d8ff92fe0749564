"""The server's settings: one validated model, filled from ``finechain serve``'s options (or a worker's environment)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from finechain.inference.exported import Runtime
from finechain.spec import Precision


class ServeSettings(BaseModel):
    """How a chain is served: where, how requests are batched, what is refused.

    Example:
        >>> ServeSettings(chain=Path("demo-chain")).max_wait_ms
        5.0
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    chain: Path
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="REST port (0: any free port)")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="gRPC port; none: no gRPC")
    workers: int = Field(1, ge=1, le=64, description="server processes, each with the chain loaded and its own batcher")
    max_batch_size: int = Field(64, ge=1, le=4096, description="most token rows (texts, long-text windows) in one forward pass")
    max_batch_tokens: int = Field(16384, ge=16, description="most tokens (rows x longest row) in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="how long a lone request waits for others to share its pass")
    queue_size: int = Field(1024, ge=1, description="requests waiting at most; more are refused with 429 and Retry-After")
    timeout_ms: float = Field(30_000, gt=0, description="default deadline of a request (a request may ask for less)")
    max_texts: int = Field(256, ge=1, description="texts per request at most")
    max_chars: int = Field(20_000, ge=1, description="characters per text at most")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="request body size at most")
    api_key: str | None = Field(None, min_length=8, description="when set, /v1 and /metrics need it (Authorization: Bearer KEY)")
    cors_origins: list[str] = Field(default_factory=list, description="origins a browser page may call from (* for any)")
    precision: Precision = "auto"
    device: str = "auto"
    runtime: Literal["auto", Runtime] = Field(
        "auto",
        description="an exported folder's runtime: auto (what its graphs were made for, if it runs well on this CPU), "
        "onnxruntime or openvino",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads of each process's model, PyTorch or ONNX Runtime (default: cores shared out among workers)"
    )
    reload_check_s: float = Field(2.0, ge=0, description="how often the chain folder is checked for a new version (0: never)")
    access_log: bool = Field(True, description="one JSON line per request on stderr")

    @property
    def threads_per_process(self) -> int:
        """CPU threads each server process gives its model: ``threads`` when set, else the cores this process may run
        on shared out among the workers (two workers on 8 cores: 4 each, not 8 each competing for the same cores).

        Example:
            >>> ServeSettings(chain=Path("demo-chain"), workers=2, threads=3).threads_per_process
            3
        """
        return self.threads or max(1, len(os.sched_getaffinity(0)) // self.workers)
