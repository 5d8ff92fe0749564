"""finechain: one pretrained encoder, many task tails.

Example:
    >>> from finechain import Chain
    >>> chain = Chain.from_pretrained("demo-chain")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from finechain.model.chain import Chain
from finechain.spec import ChainSpec, TaskSpec, TrainingConfig

__all__ = ["Chain", "ChainSpec", "TaskSpec", "TrainingConfig", "__version__"]
