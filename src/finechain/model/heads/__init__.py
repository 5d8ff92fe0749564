"""Task heads. Importing this package registers every built-in head type."""

from finechain.model.heads import classification, multilabel, regression, tagging  # noqa: F401  (registers)
from finechain.model.heads.base import Head
from finechain.model.heads.registry import HEAD_TYPES, head_type, register_head

__all__ = ["HEAD_TYPES", "Head", "head_type", "register_head"]
