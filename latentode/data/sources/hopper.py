"""MuJoCo hopper: the paper's physics benchmark, generated locally with dm_control.

Protocol (mirrors ``mujoco_physics.py`` and ``lib/parse_datasets.py`` of the paper's code,
github.com/YuliaRubanova/latent_ode):

* **Generation** (:func:`generate`): dm_control's ``hopper``/``stand`` physics, legacy
  ``numpy.random.seed(123)`` stream, 10,000 trajectories of 200 physics steps (timestep 0.005 s,
  so 1 s each). Each trajectory starts from ``physics.reset_context()`` with
  ``qpos[:2] ~ U[0, 0.5]`` (x and z of the torso, z > 0 keeps it above ground), the other five
  ``qpos ~ U[-2, 2]`` and all seven ``qvel ~ U[-5, 5]``, drawn in that order; the state is
  recorded *before* each ``physics.step()``, so step 0 is exactly the sampled initial state.
  14 channels: ``qpos`` (rootx, rootz, rooty, waist, hip, knee, ankle) then ``qvel`` (same
  joints), named :data:`CHANNELS`. No control is applied (``ctrl = 0``).
* **Scaling** (:func:`preprocess`): per channel over the whole dataset, ``(x - min) / max`` with a
  ``max`` of 0 replaced by 1. Not min-max scaling (a quirk of the paper's ``normalize_data``,
  kept so that errors compare with the paper's tables).
* **Time**: ``step / 200`` (which is also physical seconds).
* **Interpolation** (``load(task="interp")``): each trajectory keeps one random 100-step window
  ``[s, s + 100)``, ``s ~ randint(0, 101)`` from ``numpy.random.seed(1991)`` (the paper's default
  ``--random-seed``), re-timed to the first 100 grid values ``[0, 0.005, ..., 0.495]``.
  The encoder sees a random subset of the points (the paper's ``--sample-tp``), the model
  reconstructs all of them: that subsampling belongs to the task, not to this source.
* **Extrapolation** (``load(task="extrap")``): all 200 steps; the encoder sees the first
  :data:`ENCODER_STEPS_EXTRAP` ``= 200 // 3 = 66`` and the model predicts the other 134
  (the paper's ``split_data_extrap`` with ``dataset == "hopper"``).
* **Split**: first 80% of the trajectories train, last 20% test, in generation order
  (``split_train_test(train_fraq=0.8)``: ``int(n * 0.8)`` training series).

Where this differs from the paper's code: the paper trained on a pre-generated file
(``training.pt``, made with 2019 MuJoCo 2.0 / dm_control), while we regenerate with the pinned
``dm_control==1.0.50`` and ``mujoco==3.17.0`` (``pip install "latentode[hopper]"``), so the
trajectories follow the same recipe and seed but are not bit-identical to that file. Steps call
MuJoCo's ``mj_step2``/``mj_step1`` directly, exactly what dm_control's (legacy) ``physics.step()``
runs, checked for physics warnings once per trajectory instead of per step (the result is
bit-identical; a test checks it). Raw values are returned as float32, the dtype the paper's loader
converts to (``torch.Tensor(...)``) before scaling. With fewer than 10,000 trajectories the scaling
is fitted on the trajectories generated (the paper always scaled all 10,000 before ``[:args.n]``);
the first ``n`` trajectories themselves are the same for every ``n`` (same random stream).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

N_QPOS = 7
N_QVEL = 7
N_DIMS = N_QPOS + N_QVEL
N_STEPS = 200
N_TRAJECTORIES = 10_000
SEED = 123
WINDOW = 100
WINDOW_SEED = 1991
TRAIN_FRACTION = 0.8
ENCODER_STEPS_EXTRAP = N_STEPS // 3
"""Time points the encoder sees in extrapolation (the rest, 134, are predicted)."""

JOINTS = ("rootx", "rootz", "rooty", "waist", "hip", "knee", "ankle")
CHANNELS: list[str] = [f"qpos{i}" for i in range(N_QPOS)] + [f"qvel{i}" for i in range(N_QVEL)]
FRAME_KWARGS: dict[str, str] = {"id_col": "series_id", "time_col": "time"}
DEFAULT_CACHE_DIR = "data/cache"
_CACHE_FORMAT = 1
_INSTALL_HINT = (
    'The hopper dataset is generated with dm_control\'s MuJoCo hopper; install it with\n'
    '    pip install "latentode[hopper]"\n'
    "(pins dm_control==1.0.50 and mujoco==3.17.0; newer mujoco breaks dm_control's suite)."
)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _cache_path(cache_dir: str | os.PathLike, params: dict[str, int]) -> Path:
    key = json.dumps({**params, "format": _CACHE_FORMAT}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"hopper_{digest}.npz"


def _read_cache(path: Path, params: dict[str, int]) -> np.ndarray | None:
    """The cached array if ``path`` holds one made with exactly ``params``, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = json.loads(str(f["params"]))
            if stored != params:
                return None
            return f["data"]
    except (OSError, ValueError, KeyError):
        warnings.warn(f"ignoring unreadable hopper cache {path}; regenerating.", stacklevel=3)
        return None


def _write_cache(path: Path, data: np.ndarray, params: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        import mujoco

        versions = {"mujoco": mujoco.__version__}
    except ImportError:  # pragma: no cover - generation needs mujoco anyway
        versions = {}
    np.savez(
        tmp, data=data, params=np.array(json.dumps(params)),
        versions=np.array(json.dumps(versions)),
    )
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache


def _load_physics() -> Any:
    """dm_control's hopper ``stand`` physics, or an ImportError saying what to install."""
    try:
        with warnings.catch_warnings():
            # glfw warns that there is no display; rendering is not needed here.
            warnings.filterwarnings("ignore", module="glfw")
            import mujoco  # noqa: F401
            from dm_control import suite
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return suite.load("hopper", "stand").physics


def initial_states(n_trajectories: int, seed: int = SEED) -> np.ndarray:
    """The sampled initial ``[qpos, qvel]`` of each trajectory, shape ``(n, 14)``, float64.

    Draws exactly like the paper's ``_generate_random_trajectories`` after
    ``np.random.seed(seed)``: per trajectory ``qpos[:2] ~ U[0, 0.5]``, ``qpos[2:] ~ U[-2, 2]``,
    ``qvel ~ U[-5, 5]``, in that order (a private ``RandomState``; global state is untouched).
    """
    rng = np.random.RandomState(seed)
    states = np.empty((n_trajectories, N_DIMS))
    for i in range(n_trajectories):
        states[i, :2] = rng.uniform(0, 0.5, size=2)
        states[i, 2:N_QPOS] = rng.uniform(-2, 2, size=N_QPOS - 2)
        states[i, N_QPOS:] = rng.uniform(-5, 5, size=N_QVEL)
    return states


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar, or a minimal stderr progress line when tqdm is missing."""
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="hopper", unit="traj", disable=not enabled)
    except ImportError:  # pragma: no cover - tqdm comes with lightning
        return _StderrProgress(total, enabled)


class _StderrProgress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done, self.start = total, enabled, 0, time.monotonic()
        self.shown = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        pct = 100 * self.done // max(self.total, 1)
        if self.enabled and pct != self.shown:
            self.shown = pct
            elapsed = time.monotonic() - self.start
            sys.stderr.write(f"\rhopper: {self.done}/{self.total} ({pct}%, {elapsed:.0f} s)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")

    def __enter__(self) -> _StderrProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _simulate(physics: Any, states: np.ndarray, n_steps: int) -> Iterator[np.ndarray]:
    """Yield one ``(n_steps, 14)`` float64 trajectory per initial state."""
    import mujoco

    model, data = physics.model.ptr, physics.data.ptr
    qpos, qvel = data.qpos, data.qvel  # views into MjData, valid across resets
    # dm_control's legacy physics.step() is mj_step2 then mj_step1 for non-RK4 integrators
    # (mj_step1 already ran in reset_context's forward pass); call them without the per-step
    # Python overhead, and check the physics warnings once per trajectory instead.
    direct = (
        getattr(physics, "legacy_step", True)
        and physics.model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4.value
    )
    for state in states:
        out = np.empty((n_steps, N_DIMS))
        with physics.reset_context():
            qpos[:] = state[:N_QPOS]
            qvel[:] = state[N_QPOS:]
        with physics.check_invalid_state():  # raises dm_control's PhysicsError, as step() would
            for t in range(n_steps):
                out[t, :N_QPOS] = qpos
                out[t, N_QPOS:] = qvel
                if direct:
                    mujoco.mj_step2(model, data)
                    mujoco.mj_step1(model, data)
                else:  # pragma: no cover - not the case for hopper
                    physics.step()
        yield out


def generate(
    n_trajectories: int = N_TRAJECTORIES,
    n_steps: int = N_STEPS,
    seed: int = SEED,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> np.ndarray:
    """Raw hopper trajectories ``[qpos, qvel]``, shape ``(n_trajectories, n_steps, 14)``, float32.

    Generated once (about 20-40 s for 10,000 x 200 on one CPU core) and cached in ``cache_dir``
    as ``hopper_<hash of the parameters>.npz``; later calls read the cache and need neither
    dm_control nor mujoco. ``cache_dir=None`` always generates and stores nothing.

    Raises:
        ImportError: dm_control/mujoco are missing (``pip install "latentode[hopper]"``).
    """
    if n_trajectories < 1 or n_steps < 1:
        raise ValueError(
            f"n_trajectories and n_steps must be at least 1, got {n_trajectories} and {n_steps}."
        )
    params = {"n_trajectories": int(n_trajectories), "n_steps": int(n_steps), "seed": int(seed)}
    path = _cache_path(cache_dir, params) if cache_dir is not None else None
    if path is not None:
        cached = _read_cache(path, params)
        if cached is not None:
            return cached

    physics = _load_physics()
    states = initial_states(n_trajectories, seed)
    raw = np.empty((n_trajectories, n_steps, N_DIMS), dtype=np.float32)
    bar = _progress(n_trajectories, progress)
    try:
        for i, traj in enumerate(_simulate(physics, states, n_steps)):
            raw[i] = traj
            bar.update(1)
    finally:
        bar.close()
    if path is not None:
        _write_cache(path, raw, params)
    return raw


# --------------------------------------------------------------------------------------------
# Preprocessing and frames
# --------------------------------------------------------------------------------------------


def preprocess(raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The paper's per-channel scaling ``(x - min) / max`` over the whole dataset.

    ``min``/``max`` are taken over all trajectories and time points; a ``max`` of exactly 0 is
    replaced by 1 (the paper's guard against dividing by zero). Computed in float32 like the
    paper's torch code. Returns the scaled array and ``{"min": ..., "max": ...}`` (the ``max``
    after the replacement); invert with :func:`inverse_transform`.
    """
    x = np.asarray(raw, dtype=np.float32)
    params = _scaling(x)
    return (x - params["min"]) / params["max"], params


def _scaling(x: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`preprocess`'s ``min``/``max`` of a float32 array ``(..., channels)``."""
    if x.ndim < 2 or x.shape[-1] == 0 or x.size == 0:
        raise ValueError(f"preprocess needs an array (..., channels) with data, got {x.shape}.")
    flat = x.reshape(-1, x.shape[-1])
    if not np.isfinite(flat).all():
        raise ValueError("the hopper data holds NaN or infinite values; regenerate the cache.")
    hi = flat.max(0)
    return {"min": flat.min(0), "max": np.where(hi == 0, np.float32(1), hi)}


def inverse_transform(scaled: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """Undo :func:`preprocess`: ``scaled * max + min``."""
    return np.asarray(scaled) * params["max"] + params["min"]


def interp_window_starts(
    n_trajectories: int, window: int = WINDOW, n_steps: int = N_STEPS, seed: int = WINDOW_SEED
) -> np.ndarray:
    """First step of each trajectory's interpolation window.

    ``np.random.randint(0, n_steps - window + 1, size=n)`` right after ``np.random.seed(seed)``,
    as in the paper's ``parse_datasets`` (where nothing draws from the global stream between
    ``run_models.py`` seeding it with ``--random-seed``, default 1991, and this call).
    """
    if not 1 <= window <= n_steps:
        raise ValueError(f"window must be in [1, n_steps={n_steps}], got {window}.")
    return np.random.RandomState(seed).randint(0, n_steps - window + 1, size=n_trajectories)


def load(
    task: str = "interp",
    n_trajectories: int = N_TRAJECTORIES,
    seed: int = SEED,
    window: int = WINDOW,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    *,
    n_steps: int = N_STEPS,
    window_seed: int = WINDOW_SEED,
    train_fraction: float = TRAIN_FRACTION,
    progress: bool = True,
    scale_trajectories: int | None = None,
) -> pd.DataFrame:
    """The hopper benchmark as a wide DataFrame, scaled as in the paper.

    Columns: ``series_id`` (int, generation order), ``time`` (``step / n_steps``), the 14
    :data:`CHANNELS` (float32) and ``split`` ("train" for the first ``int(n * train_fraction)``
    series, "test" after). ``task="interp"``: one ``window``-step window per series (random start
    from ``window_seed``), times the first ``window`` grid values; ``task="extrap"``: all
    ``n_steps`` steps (the encoder should see the first ``n_steps // 3``,
    :data:`ENCODER_STEPS_EXTRAP` for 200). Pass ``**FRAME_KWARGS`` to the frame builder.
    ``df.attrs["hopper"]`` holds the scaling parameters and protocol values.

    ``scale_trajectories``: take the scaling's ``min``/``max`` over the first this many
    trajectories (generated and cached if needed) rather than over the ``n_trajectories``
    loaded. The paper's code scales over its whole 10,000-trajectory file and then takes its
    first ``-n``: ``scale_trajectories=10000`` reproduces that for a reduced ``n_trajectories``
    (the units of its test MSE); None scales over what is loaded (the same at 10,000).
    """
    if task not in ("interp", "extrap"):
        raise ValueError(f"task must be 'interp' or 'extrap', got {task!r}.")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    if scale_trajectories is not None and scale_trajectories < n_trajectories:
        raise ValueError(
            f"scale_trajectories={scale_trajectories} must be at least n_trajectories="
            f"{n_trajectories} (the scaling covers the loaded trajectories and more), or None.")
    n_generated = max(n_trajectories, scale_trajectories or 0)
    raw = np.asarray(generate(n_generated, n_steps, seed, cache_dir=cache_dir, progress=progress),
                     dtype=np.float32)
    scale = _scaling(raw)  # the first n of a longer run are the n generated alone
    data = (raw[:n_trajectories] - scale["min"]) / scale["max"]
    grid = np.arange(n_steps, dtype=np.float64) / n_steps
    n = data.shape[0]
    if task == "interp":
        starts = interp_window_starts(n, window, n_steps, window_seed)
        data = data[np.arange(n)[:, None], starts[:, None] + np.arange(window)]
        times = grid[:window]
    else:
        times = grid
    length = len(times)
    n_train = int(n * train_fraction)
    split = np.where(np.arange(n) < n_train, "train", "test").repeat(length)
    df = pd.DataFrame(data.reshape(n * length, N_DIMS), columns=CHANNELS)
    df.insert(0, "series_id", np.arange(n, dtype=np.int64).repeat(length))
    df.insert(1, "time", np.tile(times, n))
    df["split"] = pd.Categorical(split, categories=["train", "test"])
    df.attrs["hopper"] = {
        "task": task,
        "scale_min": scale["min"].tolist(),
        "scale_max": scale["max"].tolist(),
        "n_train": n_train,
        "encoder_steps": n_steps // 3 if task == "extrap" else None,
        "seed": seed,
        "window_seed": window_seed,
        "scale_trajectories": n_generated,
    }
    return df
