"""How far an exported or compressed chain's outputs are from the chain it came from (NumPy and ONNX Runtime only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finechain.inference import Engine
from finechain.inference.exported import ExportedChain

# texts the export is checked on: short and long, with entities, digits, punctuation and non-ASCII
CHECK_TEXTS = [
    "where is my card?",
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday to discuss the 2024 budget.",
    "the film was not good, but the soundtrack — by Hans Zimmer — was wonderful!",
    "Apple Inc. shares rose 3.5% after the U.S. Federal Reserve kept rates at 5.25 percent.",
    "ok",
    "Müller und Søren fliegen am 3. März nach São Paulo. " * 12,
]


def compare_outputs(
    reference: Engine, exported: str | Path | Engine, tasks: Sequence[str], texts: Sequence[str] = CHECK_TEXTS
) -> dict[str, float]:
    """Largest absolute difference per task between ``reference``'s outputs and the exported folder's (or an engine
    already open on it) on ``texts``.

    Example:
        >>> compare_outputs(Engine(chain.model, precision="fp32"), "demo-onnx", ["intent"])  # doctest: +SKIP
        {'intent': 2.1e-06}
    """
    theirs, _ = _engine(exported).outputs(list(texts), list(tasks))
    ours, _ = reference.outputs(list(texts), list(tasks))
    return {name: max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(ours[name], theirs[name], strict=True)) for name in tasks}


def compare_embeddings(reference: Engine, exported: str | Path | Engine, texts: Sequence[str] = CHECK_TEXTS) -> float:
    """Largest absolute difference between ``reference``'s L2-normalised sentence embeddings and the exported folder's
    (or an engine already open on it) on ``texts`` (the folder was exported with ``embeddings``).

    Example:
        >>> compare_embeddings(Engine(chain.model, precision="fp32"), "demo-onnx")  # doctest: +SKIP
        3.0e-07
    """
    theirs = _engine(exported).embed(list(texts))
    return float(np.max(np.abs(reference.embed(list(texts)) - theirs), initial=0.0))


def _engine(exported: str | Path | Engine) -> Engine:
    """An engine on an exported folder, or the one given."""
    return exported if isinstance(exported, Engine) else Engine(ExportedChain(exported))
