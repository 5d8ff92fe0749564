"""OpenVINO's CPU runtime behind the one call an exported chain makes of an ONNX Runtime session: ``run(names,
feeds)``. OpenVINO reads the exported ONNX graphs as they are; on a CPU with native bf16 it computes fp32 graphs in
bf16 (its default inference precision there) and runs graphs with calibrated int8 products (``finechain compress
--int8 --static``) on its int8 kernels."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finechain.errors import ArtifactError, FinechainError, short_reason


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported here.

    Example:
        >>> isinstance(openvino_installed(), bool)
        True
    """
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class OpenVinoSession:
    """One graph compiled by OpenVINO for the CPU (latency hint, ``threads`` inference threads), answering ``run`` as an
    ONNX Runtime session does. Calls are serialised: an OpenVINO request runs one batch at a time.

    Example:
        >>> session = OpenVinoSession(Path("demo-int8/model.onnx"), threads=2)  # doctest: +SKIP
        >>> logits, = session.run(["intent"], {"input_ids": ids, "attention_mask": mask})  # doctest: +SKIP
    """

    def __init__(self, path: Path, threads: int) -> None:
        if not openvino_installed():
            raise FinechainError(
                "openvino is not installed", fix="pip install openvino (or finechain[openvino]), or use --runtime onnxruntime"
            )
        import openvino as ov

        try:
            compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
        except Exception as error:  # OpenVINO raises its own exception types for a bad graph
            raise ArtifactError(
                f"OpenVINO cannot load the graph ({short_reason(error)})", file=path, fix="export the chain again"
            ) from None
        self.path = path
        self.request = compiled.create_infer_request()
        self.ports = {name: port for port in compiled.outputs for name in port.get_names()}  # a port may carry several names
        self.outputs = [port.get_any_name() for port in compiled.outputs]  # one name per output, in the graph's order
        self.inputs = [port.get_any_name() for port in compiled.inputs]
        self.lock = threading.Lock()

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``names`` for the inputs ``feeds``, as NumPy arrays of their own (the request reuses its buffers)."""
        with self.lock:
            found: Any = self.request.infer(dict(feeds))
            return [np.array(found[self.ports[name]]) for name in names]
