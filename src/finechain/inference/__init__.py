"""Inference: the engine that turns texts into typed predictions (prepare -> forward -> decode)."""

from finechain.inference.engine import Engine, Prepared, Row, StageTimes

__all__ = ["Engine", "Prepared", "Row", "StageTimes"]
