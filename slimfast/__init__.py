"""slimfast: fast slimTrain — separable networks whose linear head is solved every step.

The head is updated by a sampled limited-memory Tikhonov step (slimTik) whose regularisation
is chosen by sampled GCV; see ``slimtik_step`` for the batched functional solver.
"""

from __future__ import annotations

import logging

from ._version import __version__
from .backends import backend_info
from .config import SolverConfig
from .heads import head_statistics
from .optim import SlimTik, SlimTikInfo
from .refit import RefitResult, refit_head
from .solver import StepInfo, slimtik_step
from .state import SlimTikState
from .train import SlimTrain

logging.getLogger("slimfast").addHandler(logging.NullHandler())

__all__ = [
    "RefitResult", "SlimTik", "SlimTikInfo", "SlimTikState", "SlimTrain", "SolverConfig", "StepInfo", "__version__",
    "backend_info", "head_statistics", "refit_head", "slimtik_step",
]
