"""Branch modes: how a task tunes and stores its copy of the upper layers. Importing registers the built-ins."""

from finechain.branches import full, lora  # noqa: F401  (registers the built-ins)
from finechain.branches.base import BRANCH_MODES, BranchMode, BranchOptions, branch_mode, branch_options, register_branch_mode
from finechain.branches.full import FullOptions
from finechain.branches.lora import LoraOptions

__all__ = [
    "BRANCH_MODES",
    "BranchMode",
    "BranchOptions",
    "FullOptions",
    "LoraOptions",
    "branch_mode",
    "branch_options",
    "register_branch_mode",
]
