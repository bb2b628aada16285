"""Butcher tableaus as data: every method is a table run by the one engine in ``engine.py``.

Each tableau carries its nodes ``c``, stage matrix ``a``, weights ``b``, the error weights
``b_error = b - b_hat`` of its embedded pair (adaptive methods), and a dense-output matrix
``dense`` of shape ``(stages, degree + 1)``: the continuous extension
``y(t0 + theta h) = y0 + h * sum_i b_i(theta) k_i`` with ``b_i(theta) = sum_p dense[i, p] theta^p``.
Output times inside a step are answered by that polynomial, never by cutting the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import polynomial as P


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method (optionally with an embedded pair and dense output)."""

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # row i holds a[i][0..i-1]; row 0 is empty
    b: tuple[float, ...]
    dense: np.ndarray = field(repr=False)
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None  # order of the embedded (lower) method

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        """First-same-as-last: the last stage is f(t + h, y1), reusable as the next step's k1."""
        return self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.b[-1] == 0.0

    @property
    def dense_powers(self) -> np.ndarray:
        """The powers of theta that the dense output uses (its nonzero columns)."""
        return np.flatnonzero(np.any(self.dense != 0.0, axis=0))

    def dense_weights(self, theta: np.ndarray) -> np.ndarray:
        """Stage weights ``b_i(theta)`` for each theta: shape ``(len(theta), stages)``."""
        powers = np.power.outer(np.asarray(theta, dtype=np.float64), np.arange(self.dense.shape[1]))
        return powers @ self.dense.T


def _poly_rows(polys: list[np.ndarray]) -> np.ndarray:
    """Stack coefficient vectors (lowest power first) into a zero-padded matrix."""
    width = max(len(p) for p in polys)
    return np.array([np.pad(p, (0, width - len(p))) for p in polys], dtype=np.float64)


def _hermite_dense(b: tuple[float, ...]) -> np.ndarray:
    """Cubic Hermite continuous extension from y0, y1, f0 = k1 and f1 = k_last (FSAL methods)."""
    h01 = np.array([0.0, 0.0, 3.0, -2.0])  # 3t^2 - 2t^3
    h10 = np.array([0.0, 1.0, -2.0, 1.0])  # t - 2t^2 + t^3
    h11 = np.array([0.0, 0.0, -1.0, 1.0])  # -t^2 + t^3
    rows = []
    for i, bi in enumerate(b):
        row = bi * h01
        if i == 0:
            row = row + h10
        if i == len(b) - 1:
            row = row + h11
        rows.append(row)
    return _poly_rows(rows)


def _dopri5_dense() -> np.ndarray:
    """Hairer's order-4 dense output of DOPRI5 (Hairer, Norsett & Wanner, code CONTD5)."""
    b = np.array(_DOPRI5_B)
    e1 = np.eye(7)[0]
    e7 = np.eye(7)[6]
    d = np.array(
        [
            -12715105075 / 11282082432, 0.0, 87487479700 / 32700410799,
            -10690763975 / 1880347072, 701980252875 / 199316789632,
            -1453857185 / 822651844, 69997945 / 29380423,
        ]
    )
    # y(t)-y0 = t*[B + (1-t)*(e1 - B + t*((2B - e1 - e7) + (1-t)*D))], expanded per stage.
    t, one_minus_t = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    rows = []
    for i in range(7):
        inner = P.polyadd([2 * b[i] - e1[i] - e7[i]], P.polymul(one_minus_t, [d[i]]))
        mid = P.polyadd([e1[i] - b[i]], P.polymul(t, inner))
        outer = P.polyadd([b[i]], P.polymul(one_minus_t, mid))
        rows.append(P.polymul(t, outer))
    return _poly_rows(rows)


def _tsit5_dense() -> np.ndarray:
    """Tsitouras (2011) order-4 interpolant, as factored polynomials b_i(theta)."""
    def fromroots(scale: float, *roots: float) -> np.ndarray:
        return scale * P.polyfromroots(roots)

    rows = [
        scale_poly
        for scale_poly in (
            P.polymul(fromroots(-1.0530884977290216, 0.0, 1.3299890189751412),
                      [0.7139816917074209, -1.4364028541716351, 1.0]),
            P.polymul(fromroots(0.1017, 0.0, 0.0), [1.2949852507374631, -2.1966568338249754, 1.0]),
            P.polymul(fromroots(2.490627285651252793, 0.0, 0.0),
                      [1.57803468208092486, -2.38535645472061657, 1.0]),
            fromroots(-16.54810288924490272, 0.0, 0.0, 1.21712927295533244, 0.61620406037800089),
            fromroots(47.37952196281928122, 0.0, 0.0, 1.203071208372362603, 0.658047292653547382),
            fromroots(-34.87065786149660974, 0.0, 0.0, 1.2, 0.666666666666666667),
            fromroots(2.5, 0.0, 0.0, 1.0, 0.6),
        )
    ]
    return _poly_rows(rows)


EULER = ButcherTableau(
    name="euler", order=1, c=(0.0,), a=((),), b=(1.0,), dense=np.array([[0.0, 1.0]])
)

MIDPOINT = ButcherTableau(
    name="midpoint", order=2, c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0),
    dense=np.array([[0.0, 1.0, -1.0], [0.0, 0.0, 1.0]]),
)

RK4 = ButcherTableau(
    name="rk4", order=4, c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    # The classical order-3 continuous extension of RK4 (no extra evaluations).
    dense=np.array(
        [
            [0.0, 1.0, -1.5, 2 / 3],
            [0.0, 0.0, 1.0, -2 / 3],
            [0.0, 0.0, 1.0, -2 / 3],
            [0.0, 0.0, -0.5, 2 / 3],
        ]
    ),
)

_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3 = ButcherTableau(
    name="bosh3", order=3, error_order=2,
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=_BOSH3_B,
    b_error=tuple(b - bh for b, bh in zip(_BOSH3_B, (7 / 24, 1 / 4, 1 / 3, 1 / 8), strict=False)),
    dense=_hermite_dense(_BOSH3_B),
)

_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = ButcherTableau(
    name="dopri5", order=5, error_order=4,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    b_error=tuple(b - bh for b, bh in zip(_DOPRI5_B, _DOPRI5_BHAT, strict=False)),
    dense=_dopri5_dense(),
)

_TSIT5_B = (
    0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
    -3.290069515436081, 2.324710524099774, 0.0,
)
TSIT5 = ButcherTableau(
    name="tsit5", order=5, error_order=4,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
         -0.028269050394068383),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    b_error=(
        -0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
        -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 0.015151515151515152,
    ),
    dense=_tsit5_dense(),
)

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, MIDPOINT, RK4, BOSH3, DOPRI5, TSIT5)
}
"""Every method ``odeint`` knows, by the name its ``method=`` takes."""
