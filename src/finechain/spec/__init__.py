"""The chain spec: the validated YAML that drives training. Reading one imports no PyTorch.

Example:
    >>> from finechain.spec import TaskSpec
    >>> TaskSpec(name="intent", train="intents.csv").head.pooling
    'mean'
"""

from finechain.spec.loading import load_chain_spec, load_task_specs, spec_line, unknown_field_hint
from finechain.spec.schema import (
    DEFAULT_BACKBONE,
    FLAT_HEAD_OPTIONS,
    TASK_NAME,
    Cache,
    ChainSpec,
    JointConfig,
    Precision,
    TaskFormat,
    TaskSpec,
    TrainingConfig,
    TrainingOverrides,
    TuneConfig,
    default_split,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "FLAT_HEAD_OPTIONS",
    "TASK_NAME",
    "Cache",
    "ChainSpec",
    "JointConfig",
    "Precision",
    "TaskFormat",
    "TaskSpec",
    "TrainingConfig",
    "TrainingOverrides",
    "TuneConfig",
    "default_split",
    "load_chain_spec",
    "load_task_specs",
    "spec_line",
    "unknown_field_hint",
]
