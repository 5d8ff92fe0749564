"""Branch modes: how a task tunes and stores its copy of the upper layers. Importing registers the built-ins."""

from finechain.model.branches import full, lora  # noqa: F401  (registers)
from finechain.model.branches.base import BRANCH_MODES, BranchMode, branch_mode, register_branch_mode

__all__ = ["BRANCH_MODES", "BranchMode", "branch_mode", "register_branch_mode"]
