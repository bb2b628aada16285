"""Solver failures, each with a message that names the problem and the way out."""

from __future__ import annotations


class SolverError(RuntimeError):
    """Base class of every failure raised while integrating."""


class StepSizeUnderflowError(SolverError):
    """The adaptive step size shrank below what floating point can resolve."""


class MaxStepsExceededError(SolverError):
    """More than ``max_steps`` steps (accepted plus rejected) were needed."""


class NonFiniteStateError(SolverError):
    """The state or the vector field became NaN or infinite."""


class NonFiniteInitialStateError(NonFiniteStateError, ValueError):
    """``y0`` holds NaN or inf: bad input to ``odeint`` (a ``ValueError``), and, inside a model's
    training step, usually weights that diverged (a ``SolverError``, so training names where)."""


class OutputTimesError(ValueError):
    """Output times ``t`` that cannot be answered (unsorted, repeated, not finite, rows that
    start apart). ``named(name)`` gives the message with the caller's name for ``t``, so that a
    model passing its own argument straight through (a latent ODE's ``pred_times``) names it
    without checking the times a second time."""

    MARK = "\x00t"

    def __init__(self, template: str, kind: str = "order"):
        self.template = template
        self.kind = kind  # "order", "repeat", "finite", "start", "direction"
        super().__init__(self.named("t"))

    def named(self, name: str) -> str:
        """The message with ``t`` called ``name``."""
        return self.template.replace(self.MARK, name)

