"""Counters a caller can read after a solve (logging, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class SolverStats:
    """Function evaluations and steps of one ``odeint`` call and of its backward pass.

    Pass an instance as ``odeint(..., stats=stats)``; the forward fields are filled when ``odeint``
    returns, the backward ones when autograd runs the backward pass (adjoint and checkpoint
    modes; with ``gradient="backprop"`` autograd replays the recorded graph and no evaluations
    are counted).
    Counters accumulate over calls until :meth:`reset`. An adjoint backward solve that starts
    over anchored (``backward_restarts``) counts the abandoned attempt's evaluations in
    ``nfe_backward`` (work done) but not its steps; one whose ``z`` was lost and that was
    recomputed by checkpointing (``backward_checkpointed``) counts both solves' evaluations
    (the forward solve repeated among them) and the steps of the lost solve and the replay.
    A field that first draws random numbers after its first evaluation is solved twice
    forwards (the second time recording its draws for the backward pass): both solves count.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int = 0
    steps_rejected: int = 0
    backward_steps_accepted: int = 0
    backward_steps_rejected: int = 0
    backward_restarts: int = 0  # adjoint solves started over anchored at every output time
    backward_resets: int = 0  # folded adjoint steps ending with z moved onto the forward path
    backward_checkpointed: int = 0  # adjoint gradients recomputed by checkpointing (z was lost)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
