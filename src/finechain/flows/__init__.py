"""Flows: stages of tasks where one answer routes or feeds the next (see ``finechain.spec.flows`` for the spec)."""

from finechain.flows.flow import Flow, FlowResult, SpanAnswer

__all__ = ["Flow", "FlowResult", "SpanAnswer"]
