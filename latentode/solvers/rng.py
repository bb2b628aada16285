"""Random-number state around a vector field that draws random numbers (dropout, noise).

The checkpoint mode replays steps in its backward pass: a field that draws random numbers would
draw other ones there, and the gradient would belong to another function than the one solved.
``RngTape`` notices whether the forward solve drew any and, if so, keeps the generator state
before each evaluation, so that the replay can set it back and draw the same numbers (as
``torch.utils.checkpoint`` does with ``preserve_rng_state``). A field that draws nothing costs
two state reads per solve and no memory.
"""

from __future__ import annotations

from collections import deque

import torch

State = tuple[torch.Tensor, torch.Tensor | None]


class RngTape:
    """Generator states before the forward solve's evaluations, for an exact replay."""

    def __init__(self, device: torch.device, keep: bool):
        self.cuda = device if device.type == "cuda" else None
        self.keep = keep  # keep the states (a replay will need them), or only notice draws
        self.start = self.read()
        self.active = False  # the field drew random numbers: keep a state per evaluation
        self.recent: deque = deque()  # (output, state before it) since the last accepted step

    def read(self) -> State:
        cuda = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None
        return torch.get_rng_state(), cuda

    def write(self, state: State) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            assert self.cuda is not None  # a CUDA state is read only where self.cuda is set
            torch.cuda.set_rng_state(state[1], self.cuda)

    def moved_since(self, state: State) -> bool:
        now = self.read()
        if not torch.equal(now[0], state[0]):
            return True
        # both None, or both CUDA states: this tape read them
        return now[1] is not None and state[1] is not None and not torch.equal(now[1], state[1])

    def remember(self, output: torch.Tensor, before: State) -> None:
        self.recent.append((output, before))

    def forget_all_but(self, output: torch.Tensor) -> None:
        """Drop every remembered evaluation but the one that returned ``output`` (an accepted
        step's last stage: the next step's first, for first-same-as-last tableaus)."""
        kept = [(out, state) for out, state in self.recent if out is output]
        self.recent.clear()
        self.recent.extend(kept)

    def state_of(self, output: torch.Tensor) -> State | None:
        """The state before the evaluation that returned ``output`` (None: not taped)."""
        for out, state in reversed(self.recent):
            if out is output:
                return state
        return None
