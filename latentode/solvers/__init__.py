"""Pure-torch ODE solving with adjoint and checkpointed gradients (no model code here).

    from latentode.solvers import odeint
    ys = odeint(func, y0, t, method="dopri5", rtol=1e-3, atol=1e-4, gradient="adjoint")
"""

from .errors import (
    MaxStepsExceededError,
    NonFiniteInitialStateError,
    NonFiniteStateError,
    OutputTimesError,
    SolverError,
    StepSizeUnderflowError,
)
from .odeint import ADAPTIVE_METHODS, FIXED_METHODS, GRADIENT_MODES, odeint, odeint_adjoint
from .stats import SolverStats
from .tableaus import TABLEAUS, ButcherTableau

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "GRADIENT_MODES",
    "TABLEAUS",
    "ButcherTableau",
    "MaxStepsExceededError",
    "NonFiniteInitialStateError",
    "NonFiniteStateError",
    "OutputTimesError",
    "SolverError",
    "SolverStats",
    "StepSizeUnderflowError",
    "odeint",
    "odeint_adjoint",
]
