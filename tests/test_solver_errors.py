"""Every bad input to ``latentode.solvers.odeint`` and every solver failure raises, with a message.

Each test checks the exception class and key phrases of its message (the values involved, the
time of a failure, the suggested way out), and runs under a wall-clock guard so that a failure
mode that loops instead of raising shows up as a test failure rather than a hung run.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal

import numpy as np
import pytest
import torch

from latentode.solvers import (
    MaxStepsExceededError,
    NonFiniteStateError,
    SolverError,
    SolverStats,
    StepSizeUnderflowError,
    odeint,
)

F64 = torch.float64
MODES = ("backprop", "adjoint", "checkpoint")
Y0 = torch.ones(2, 3, dtype=F64)
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y


def square(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``dy/dt = y^2``: from ``y(0) = 1`` the solution ``1 / (1 - t)`` blows up at ``t = 1``."""
    return y**2


def tensor(values, **kwargs) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, **kwargs)


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    """Fail (instead of hanging) if the body runs longer than ``seconds``."""
    if not hasattr(signal, "setitimer"):  # pragma: no cover - not on Linux
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"the solver did not raise within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def time_in(message: str, prefix: str = "at t=") -> float:
    """The number after ``prefix`` in an error message."""
    found = re.search(re.escape(prefix) + r"(-?[0-9.]+(?:e[-+]?\d+)?)", message)
    assert found, f"no {prefix!r} in: {message}"
    return float(found.group(1))


# --------------------------------------------------------------------------------------------
# the exception classes
# --------------------------------------------------------------------------------------------


def test_exception_hierarchy():
    for cls in (StepSizeUnderflowError, MaxStepsExceededError, NonFiniteStateError):
        assert issubclass(cls, SolverError)
    assert issubclass(SolverError, RuntimeError)


# --------------------------------------------------------------------------------------------
# output times
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_non_monotonic_t(mode):
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"t must be monotonic \(increasing, as it starts\), "
                       r"but t\[2\] = 0\.5 comes after t\[1\] = 1\. Sort the output times"):
        odeint(decay, y0, tensor([0.0, 1.0, 0.5, 2.0]), gradient=mode)


def test_non_monotonic_t_decreasing():
    with pytest.raises(ValueError, match=r"monotonic \(decreasing, as it starts\), but t\[2\] = "
                       r"-0\.5 comes after t\[1\] = -1"):
        odeint(decay, Y0, tensor([0.0, -1.0, -0.5]))


def test_repeated_t():
    with pytest.raises(ValueError, match=r"t must be strictly monotonic, but t\[3\] = 1 repeats "
                       r"t\[2\]\. Remove duplicate output times"):
        odeint(decay, Y0, tensor([0.0, 0.5, 1.0, 1.0, 2.0]))


def test_per_sample_rows_with_different_start():
    t = tensor([[0.0, 1.0], [0.1, 1.0]])
    with pytest.raises(ValueError, match=r"every row of per-sample t must start at the same time: "
                       r"t\[0, 0\] = 0 but t\[1, 0\] = 0\.1"):
        odeint(decay, Y0, t)


def test_per_sample_t_with_wrong_batch_size():
    t = tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match=r"per-sample times t of shape \(3, 2\) need y0 of shape "
                       r"\(3, \.\.\.\), one row per sample; got y0 of shape \(2, 3\)"):
        odeint(decay, Y0, t)


def test_per_sample_row_not_monotonic():
    t = tensor([[0.0, 1.0, 2.0], [0.0, 1.5, 1.2]])
    with pytest.raises(ValueError, match=r"t\[1\] must be monotonic \(increasing, as it starts\), "
                       r"but t\[1\]\[2\] = 1\.2 comes after t\[1\]\[1\] = 1\.5"):
        odeint(decay, Y0, t)


def test_per_sample_repeats_are_padding_not_errors():
    t = tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 0.5, 2.0]])  # allowed in 2-D t, unlike 1-D
    ys = odeint(decay, Y0, t, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ys, torch.exp(-t).unsqueeze(-1).expand(2, 4, 3), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("t", "message"),
    [
        ([[0.0, 1.0, 2.0], [0.0, -0.5, -1.0]], r"the longest row is increasing but t\[1\] is "
         r"decreasing \(t\[1, -1\] = -1 vs start 0\)"),
        ([[0.0, 0.5, 1.0], [0.0, -1.0, -2.0]], r"the longest row is decreasing but t\[0\] is "
         r"increasing \(t\[0, -1\] = 1 vs start 0\)"),
    ],
    ids=["second-row-reversed", "first-row-reversed"],
)
def test_per_sample_rows_in_opposite_directions(t, message):
    # each row is monotonic on its own, so the message must be about the direction (an earlier
    # version raised ValueError with an empty message here)
    with pytest.raises(ValueError, match=r"every row of per-sample t must run the same way: "
                       + message + r"\. Integrate the two directions in separate calls"):
        odeint(decay, Y0, tensor(t))


@pytest.mark.parametrize(
    ("t", "match"),
    [
        (torch.zeros(1, 1, 2, dtype=F64), r"t must have shape \(T,\) or \(batch, T\).*\(1, 1, 2\)"),
        (torch.zeros(0, dtype=F64), r"t is empty"),
        (tensor([0.0, float("nan")]), r"t contains NaN or inf"),
        (tensor([0.0, float("inf")]), r"t contains NaN or inf"),
    ],
    ids=["3-d", "empty", "nan", "inf"],
)
def test_malformed_t(t, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, Y0, t)


# --------------------------------------------------------------------------------------------
# what func returns
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("mode", MODES)
def test_func_returning_wrong_shape(mode, method):
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"func\(t, y\) returned shape \(2, 2\) but the state y0 "
                       r"has shape \(2, 3\); dy/dt must have exactly the shape of y"):
        odeint(lambda t, y: y[:, :2], y0, T, method=method, gradient=mode)


def test_func_returning_a_non_tensor():
    with pytest.raises(TypeError, match=r"func\(t, y\) must return a tensor, got float"):
        odeint(lambda t, y: 1.0, Y0, T)


def test_func_returning_wrong_dtype():
    with pytest.raises(ValueError, match=r"returned torch\.float32 on cpu for a state of "
                       r"torch\.float64 on cpu"):
        odeint(lambda t, y: y.float(), Y0, T)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("mode", MODES)
def test_func_returning_nan_at_start(mode, method):
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(NonFiniteStateError, match=r"func\(t, y\) returned NaN or inf at the start "
                       r"time t=0\.5; check func and y0"):
        odeint(lambda t, y: y * float("nan"), y0, T + 0.5, method=method, gradient=mode)


# --------------------------------------------------------------------------------------------
# failures during the integration
# --------------------------------------------------------------------------------------------


def test_fixed_step_blow_up_names_the_first_output_affected():
    # Euler on y' = y^2 with h = 0.25: y_{n+1} = y_n + y_n^2 / 4 overflows at step 15 (t = 3.75),
    # so the first output time holding inf/NaN is t = 4.
    t = torch.linspace(0.0, 5.0, 11, dtype=F64)
    with no_hang(), pytest.raises(NonFiniteStateError) as info:
        odeint(square, torch.ones(2, dtype=F64), t, method="euler", step_size=0.25)
    message = str(info.value)
    assert "the solution became NaN or inf" in message
    assert time_in(message, "first output affected: t=") == 4.0
    assert "smaller step_size" in message and "adaptive method" in message
    assert "3/lambda" in message  # how small, where the problem is stiff


def test_fixed_step_blow_up_per_sample_times():
    # row 0 blows up (first affected output t = 4, see above); row 1 starts at the fixed point 0
    t = tensor([[0.0, 1.0, 2.0, 5.0], [0.0, 0.5, 4.5, 4.5]])
    y0 = tensor([[1.0], [0.0]])
    with no_hang(), pytest.raises(NonFiniteStateError) as info:
        odeint(square, y0, t, method="euler", step_size=0.25)
    assert time_in(str(info.value), "first output affected: t=") == 5.0


@pytest.mark.parametrize("mode", MODES)
def test_rk4_blow_up(mode):
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    with no_hang(), pytest.raises(NonFiniteStateError, match=r"first output affected: t=1\.5"):
        odeint(square, y0, torch.linspace(0.0, 3.0, 7, dtype=F64), method="rk4", step_size=0.1,
               gradient=mode)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_adaptive_overflow_reports_the_time(method):
    # y' = exp(y), y(0) = 1 blows up at t = exp(-1): exp overflows to inf just before
    with no_hang(), pytest.raises(NonFiniteStateError) as info:
        odeint(lambda t, y: torch.exp(y), torch.ones(2, dtype=F64), tensor([0.0, 2.0]),
               method=method)
    message = str(info.value)
    assert "became NaN/inf" in message and "every trial step" in message
    assert abs(time_in(message) - math.exp(-1.0)) < 1e-3


def test_adaptive_nan_from_func_reports_the_time():
    def breaks_after(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0.7, torch.full_like(y, float("nan")), -y)

    with no_hang(), pytest.raises(NonFiniteStateError) as info:
        odeint(breaks_after, torch.ones(2, dtype=F64), tensor([0.0, 0.5, 2.0]))
    assert abs(time_in(str(info.value)) - 0.7) < 1e-6
    assert "Check func for overflow" in str(info.value)


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_step_size_underflow_at_blow_up(method, tol):
    # y' = y^2 from y(0) = 1 towards t = 2: the solution blows up at t = 1
    with no_hang(), pytest.raises(StepSizeUnderflowError) as info:
        odeint(square, torch.ones(2, dtype=F64), tensor([0.0, 2.0]), method=method, rtol=tol,
               atol=tol)
    message = str(info.value)
    assert message.startswith("step size underflow at t=")
    assert abs(time_in(message) - 1.0) < 1e-3
    assert f"rtol={tol:g}" in message
    assert "looser tolerance" in message
    assert "fixed-step method (method='rk4', step_size=...)" in message
    assert "rescaling time" in message


def test_max_steps_exceeded_adaptive():
    def fast_oscillator(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 50.0 * torch.stack([y[1], -y[0]])

    stats = SolverStats()
    with no_hang(), pytest.raises(MaxStepsExceededError) as info:
        odeint(fast_oscillator, torch.ones(2, dtype=F64), tensor([0.0, 10.0]), max_steps=20,
               stats=stats)
    message = str(info.value)
    assert re.search(r"max_steps=20 exceeded at t=[0-9.]+ on the way to t=10 \(\d+ accepted, "
                     r"\d+ rejected steps, mean accepted step [0-9.e-]+\)", message)
    assert "Raise max_steps" in message and "loosen rtol/atol" in message
    assert "stiff" in message and "implicit solver" in message  # not a fixed step: unstable too
    assert 0.0 < time_in(message) < 10.0
    assert stats.nfe_forward < 200  # it stopped at the bound


def test_max_steps_counts_rejected_steps():
    def breaks_after(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0.2, torch.full_like(y, float("nan")), -y)

    with no_hang(), pytest.raises(MaxStepsExceededError,
                                  match=r"max_steps=5 exceeded .*\(\d accepted, [1-9] rejected"):
        odeint(breaks_after, torch.ones(2, dtype=F64), tensor([0.0, 2.0]), max_steps=5)


def test_max_steps_exceeded_fixed_step():
    with no_hang(), pytest.raises(MaxStepsExceededError, match=r"step_size=0\.01 needs 1000 steps "
                                  r"to cover \[0, 10\], more than max_steps=20"):
        odeint(decay, Y0, tensor([0.0, 10.0]), method="rk4", step_size=0.01, max_steps=20)


def test_max_steps_bounds_a_fixed_step_solve_without_step_size():
    """One step per output interval counts too (50 outputs took 49 steps under max_steps=5)."""
    t = torch.linspace(0.0, 1.0, 50, dtype=F64)
    with no_hang(), pytest.raises(MaxStepsExceededError, match=r"one step per output interval "
                                  r"makes 49 steps, more than max_steps=5"):
        odeint(decay, Y0, t, method="rk4", max_steps=5)
    assert odeint(decay, Y0, t, method="rk4", max_steps=49).shape[0] == 50


def test_max_steps_exceeded_in_the_adjoint_backward_solve():
    """A tight backward tolerance needs more steps than the forward solve: the bound holds there."""
    a = tensor([[0.0, 1.0], [-1.0, -0.01]], requires_grad=True)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ a.T

    y0 = torch.ones(3, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 5.0, 4, dtype=F64)
    probe = SolverStats()
    odeint(field, y0, t, rtol=1e-5, atol=1e-5, stats=probe)
    limit = probe.steps_accepted + probe.steps_rejected + 2
    ys = odeint(field, y0, t, rtol=1e-5, atol=1e-5, gradient="adjoint", max_steps=limit,
                adjoint_params=[a], adjoint_rtol=1e-12, adjoint_atol=1e-12)
    with no_hang(), pytest.raises(MaxStepsExceededError,
                                  match=rf"max_steps={limit} exceeded at t=.* on the way to t=0 "):
        ys.sum().backward()


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_step_size_with_adaptive_method(method):
    with pytest.raises(ValueError, match=rf"step_size is for the fixed-step methods "
                       rf"\['euler', 'midpoint', 'rk4'\]; '{method}' chooses its own steps "
                       r"\(use first_step= to set the first one\)"):
        odeint(decay, Y0, T, method=method, step_size=0.1)


@pytest.mark.parametrize("step", [0.0, -0.1])
def test_non_positive_step_size(step):
    with pytest.raises(ValueError, match=r"step_size must be a positive number"):
        odeint(decay, Y0, T, method="rk4", step_size=step)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"unknown method 'rk45'; choose one of \['bosh3', "
                       r"'dopri5', 'euler', 'midpoint', 'rk4', 'tsit5'\]"):
        odeint(decay, Y0, T, method="rk45")


def test_unknown_gradient():
    with pytest.raises(ValueError, match=r"unknown gradient 'adj'; choose one of \['backprop', "
                       r"'adjoint', 'checkpoint'\]"):
        odeint(decay, Y0, T, gradient="adj")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_y0(mode, bad):
    y0 = tensor([[1.0, bad, 0.0]], requires_grad=True)
    with pytest.raises(ValueError, match=r"y0 contains NaN or inf; the initial state must be "
                       r"finite"):
        odeint(decay, y0, T, gradient=mode)


@pytest.mark.parametrize(
    ("y0", "match"),
    [
        (torch.tensor([1, 2]), r"y0 must be a floating-point tensor, got torch\.int64\. "
                               r"Convert it with y0\.float\(\)"),
        ([1.0, 2.0], r"y0 must be a floating-point tensor, got list"),
        ((torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)),
         r"got tuple\. A state of several tensors .* concatenate them"),
        (torch.tensor(1.0, dtype=F64), r"y0 must have at least one dimension"),
    ],
    ids=["int", "list", "tuple", "scalar"],
)
def test_bad_y0(y0, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, y0, T)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": 0.0}, r"rtol must be > 0 and atol >= 0, got rtol=0\.0"),
        ({"atol": -1e-6}, r"rtol must be > 0 and atol >= 0, got rtol=0\.001, atol=-1e-06"),
        ({"max_steps": 0}, r"max_steps must be at least 1, got 0"),
        # per-component tolerances: a TypeError from a comparison before
        ({"atol": [1e-6, 1e-6]}, r"atol must be one number, got \[1e-06, 1e-06\]: the error "
                                 r"norm is an RMS over the whole state\. .* rescale them"),
        ({"adjoint_rtol": (1e-3,)}, r"adjoint_rtol must be one number"),
    ],
    ids=["rtol", "atol", "max_steps", "atol_list", "adjoint_rtol_tuple"],
)
def test_bad_tolerances_and_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, Y0, T, **kwargs)


@pytest.mark.parametrize("mode", ["adjoint", "checkpoint"])
def test_adjoint_params_must_be_tensors(mode):
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(TypeError, match=r"adjoint_params must hold tensors, got float"):
        odeint(decay, y0, T, gradient=mode, adjoint_params=[1.0])


def test_t_that_requires_grad_is_refused_not_silently_cut():
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"t requires grad, but odeint does not differentiate "
                                         r"with respect to the output times.*t\.detach\(\)"):
        odeint(lambda s, y: -y, torch.ones(2), t)
    with torch.no_grad():  # nothing to differentiate: fine
        assert odeint(lambda s, y: -y, torch.ones(2), t).shape == (2, 2)


def test_torchdiffeq_style_options_are_accepted_and_checked():
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    y0 = torch.ones(2, dtype=torch.float64)
    ours = odeint(lambda s, y: -y, y0, t, method="rk4", step_size=0.1)
    theirs = odeint(lambda s, y: -y, y0, t, method="rk4", options=dict(step_size=0.1))
    assert torch.equal(ours, theirs)
    with pytest.raises(MaxStepsExceededError):
        odeint(lambda s, y: -y, y0, t, options=dict(max_num_steps=1))
    with pytest.raises(ValueError, match=r"options \['grid_points'\] are not supported"):
        odeint(lambda s, y: -y, y0, t, options=dict(grid_points=t))


def test_torchdiffeq_keywords_we_lack_say_how_to_do_without():
    t, y0 = torch.linspace(0.0, 1.0, 3), torch.ones(2)
    with pytest.raises(TypeError, match=r"\['event_fn'\]; event_fn: events are not supported: "
                                        r"solve up to the event with one call"):
        odeint(lambda s, y: -y, y0, t, event_fn=lambda s, y: y[0])
    with pytest.raises(TypeError, match=r"\['metod'\]; it takes adjoint_atol, .*method, "):
        odeint(lambda s, y: -y, y0, t, metod="rk4")
    with pytest.raises(ValueError, match=r"\['jump_t'\] are not supported.*second: every step"):
        odeint(lambda s, y: -y, y0, t, options=dict(jump_t=torch.tensor([0.5])))
    with pytest.raises(ValueError, match=r"only norm='seminorm'"):
        odeint(lambda s, y: -y, y0, t, adjoint_options=dict(norm=lambda x: x.abs().max()))
    with pytest.raises(ValueError, match=r"unknown adjoint_method 'dopri8'"):
        odeint(lambda s, y: -y, y0, t, adjoint_method="dopri8")
    with pytest.raises(ValueError, match=r"its method must be one of \['bosh3', 'dopri5', "):
        odeint(lambda s, y: -y, y0, t, method="dopri5", adjoint_method="rk4")
    from latentode.solvers import odeint_adjoint

    with pytest.raises(TypeError, match=r"odeint_adjoint is odeint\(\.\.\., gradient='adjoint'\)"):
        odeint_adjoint(lambda s, y: -y, y0, t, gradient="checkpoint")
    with pytest.raises(ValueError, match=r"unknown method 'scipy_solver'"):
        odeint(lambda s, y: -y, y0, t, method="scipy_solver", options=dict(solver="LSODA"))
    with pytest.raises(TypeError, match=r"adjoint_params must be a sequence of tensors .*a dict"):
        odeint(lambda s, y: -y, y0, t, gradient="adjoint", adjoint_params={"w": y0})
    # torchdiffeq's method=None is its default, dopri5
    assert torch.equal(odeint(lambda s, y: -y, y0, t, method=None),
                       odeint(lambda s, y: -y, y0, t, method="dopri5"))


def test_an_empty_batch_gives_an_empty_answer():
    t = torch.tensor([0.0, 0.5, 1.0])
    y0 = torch.ones(0, 3, requires_grad=True)
    ys = odeint(lambda s, y: -y, y0, t, gradient="adjoint")
    assert ys.shape == (3, 0, 3)
    ys.sum().backward()
    assert y0.grad.shape == (0, 3)
    assert odeint(lambda s, y: -y, y0, t.expand(0, 3)).shape == (0, 3, 3)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "midpoint"])
def test_a_func_overwriting_the_tensor_it_returned_is_refused(method):
    """A func writing into a kept buffer: every stage aliased the last one (dopri5 on
    dy/dt = -y gave 0.499 for e^-1 = 0.368, silently). Euler uses each answer before the
    next call, and answers written to distinct slices of one buffer overwrite nothing: both
    fine (a first version refused them)."""
    buffer = torch.empty(2, 3, dtype=F64)

    def reused(t, y):
        buffer.copy_(-y)
        return buffer

    with pytest.raises(ValueError, match=r"returned the tensor it had returned on its previous "
                                         r"call, overwritten in place.*buffer\.clone\(\)"):
        odeint(reused, Y0, T, method=method)
    exact = odeint(decay, Y0, T, method="euler", step_size=0.01)
    assert torch.equal(odeint(reused, Y0, T, method="euler", step_size=0.01), exact)
    slots = torch.empty(100_000, 2, 3, dtype=F64)
    calls = [0]

    def sliced(t, y):
        calls[0] += 1
        return torch.neg(y, out=slots[calls[0]])

    step = {} if method == "dopri5" else {"step_size": 0.1}
    assert torch.allclose(odeint(sliced, Y0, T, method=method, **step)[-1],
                          odeint(decay, Y0, T, method=method, **step)[-1])
    # one unchanging tensor (a constant field) and y itself are fine
    constant = torch.full((2, 3), 2.0, dtype=F64)
    assert torch.allclose(odeint(lambda t, y: constant, Y0, T)[-1], Y0 + 2.0)
    assert torch.allclose(odeint(lambda t, y: y, Y0, T, rtol=1e-8, atol=1e-8)[-1],
                          Y0 * math.e)


def test_step_size_and_first_step_as_tensors_and_a_zero_first_step():
    ours = odeint(decay, Y0, T, method="rk4", step_size=0.1)
    # torchdiffeq's callers pass one-element tensors (a TypeError from numpy before)
    assert torch.equal(odeint(decay, Y0, T, method="rk4", step_size=tensor(0.1)), ours)
    assert torch.equal(odeint(decay, Y0, T, method="rk4",
                              options=dict(step_size=tensor([0.1]))), ours)
    assert torch.allclose(odeint(decay, Y0, T, method="rk4", step_size=torch.tensor(0.1)),
                          ours, rtol=1e-6)  # float32's 0.1: another grid, as close as that
    assert torch.equal(odeint(decay, Y0, T, method="rk4", step_size=np.array(0.1)), ours)
    assert torch.equal(odeint(decay, Y0, T, first_step=tensor(0.05)),
                       odeint(decay, Y0, T, first_step=0.05))
    # first_step=0 was a "step size underflow ... the problem may be stiff" error
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match=r"first_step must be a nonzero number"):
            odeint(decay, Y0, T, first_step=bad)
    with pytest.raises(ValueError, match=r"step_size must be one number .* got \[0\.1\]"):
        odeint(decay, Y0, T, method="rk4", step_size=[0.1])


def test_a_complex_state_is_refused_without_advice_that_drops_its_imaginary_part():
    with pytest.raises(ValueError, match=r"Complex states are not supported, and y0\.float\(\) "
                                         r"would drop the imaginary part.*view_as_real"):
        odeint(lambda t, y: -1j * y, torch.ones(2, dtype=torch.complex64), T)


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jvp", "vmap"])
def test_torch_func_transforms_are_refused_by_name(transform):
    """They failed inside with "Cannot access data pointer of Tensor that doesn't have
    storage"."""
    def solve(y):
        return odeint(decay, y, T)[-1].sum()

    y = torch.ones(3, dtype=F64)
    calls = {"grad": lambda: torch.func.grad(solve)(y),
             "jacrev": lambda: torch.func.jacrev(solve)(y),
             "jvp": lambda: torch.func.jvp(solve, (y,), (torch.ones_like(y),)),
             "vmap": lambda: torch.func.vmap(solve)(torch.ones(4, 3, dtype=F64))}
    with pytest.raises(RuntimeError, match=r"odeint does not run under torch\.func transforms"
                                           r".*torch\.autograd"):
        calls[transform]()
    # torch.autograd's own functional API works
    jac = torch.autograd.functional.jacobian(solve, y)
    assert torch.allclose(jac, torch.full((3,), math.exp(-1.0), dtype=F64), atol=1e-3)


def test_a_solve_under_inference_mode_is_not_stopped_by_the_buffer_check():
    """Inference tensors keep no version counter: the check of a reused output buffer raised
    "Inference tensors do not track version counter" on every solve under inference_mode."""
    with torch.inference_mode():
        out = odeint(decay, Y0, T, rtol=1e-8, atol=1e-8)
    assert torch.allclose(out[-1], Y0 * math.exp(-1.0))
