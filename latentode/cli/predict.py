"""``latentode-predict``: forecasts of the series in a CSV, from a trained model, into a CSV.

    latentode-predict ckpt_path=outputs/train/<run>/checkpoints/last.ckpt input=data.csv \\
        output=pred.csv horizon=2.0 n=20
    latentode-predict model_dir=my_forecaster input=data.csv output=pred.csv times=[5.5,6,6.5]
    latentode-predict model_dir=... input=data.csv output=pred.csv horizon=7D freq=D plot=p.png

The model is either a ``latentode-train`` checkpoint (``ckpt_path=``: the run's
``.hydra/config.yaml``, found above the checkpoint as ``latentode-eval`` does, rebuilds the data,
so the time transform and the scaler fitted on its training split, and the model; ``overrides=``
change that config) or a directory written by ``LatentODEForecaster.save`` (``model_dir=``).
With ``ckpt_path``, ``save_dir=`` also saves the forecaster built from the run there: the
rebuild and the noise calibration are done once, later calls with ``model_dir=`` answer the
same.
Every series of ``input`` (CSV or parquet, the training data's columns; ``id_col=``/``time_col=``
rename them) is conditioned on its rows there and answered at ``times=`` (shared by all series),
on a grid after its last observation (``horizon=`` with ``n=`` or ``freq=``), or by default at its
own time stamps. ``output`` (CSV, or parquet by suffix) is the long frame of
``LatentODEForecaster.predict``: id, time, channel, ``mean``, one ``q<level>`` column per
quantile, in the data's units; datetimes in, datetimes out. The quantiles are of observations
(of the quantity itself for a model trained with measurement uncertainties: its noise is
calibrated beyond them): sample paths plus the calibrated observation noise
(``noise=calibrated``, the default: fitted to held-out residuals of the run's validation split,
or stored by ``save``), the model's fixed ``obs_std`` (``noise=model``) or none
(``noise=none``). Date strings in a CSV's time column are read as datetimes when the model
was trained on datetimes. ``proba_output=`` also writes
each series' label probabilities (``LatentODEForecaster.predict_proba``: one row per series, ``p``
for a binary label, else ``p0, p1, ...``), for a model trained with a label per series
(``fit(label_col=)``, or ``data.dataset.label_col=`` with ``model.n_labels=``).

``score=points`` or ``score=end`` scores the model on ``input`` instead: part of each series is
hidden (``score_fraction`` of its times at random, or the last ``score_fraction`` of its span),
predicted from the rest with the calibrated noise, and ``output`` gets one row per channel
(``LatentODEForecaster.score``: ``n``, ``mse``, ``mae``, ``coverage`` and ``width`` of the
central ``score_level`` interval, ``naive_mse`` of linear interpolation of the channel's own
history), in the data's units: a run's test metrics for series of one's own, through the run's
time transform and scaler.

    latentode-predict ckpt_path=... input=new.csv output=scores.csv score=end
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from latentode.cli import config_dir
from latentode.cli.errors import input_errors
from latentode.cli.options import refuse_foreign_options
from latentode.cli.train import quiet_known_warnings
from latentode.cli.typos import run_app
from latentode.data.files import check_writable, read_table, write_table
from latentode.data.frame import iso_separator, iso_times

log = logging.getLogger(__name__)


def read_frame(path: Path, id_col: str | None = None) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame (a CSV's ``id_col`` read as written)."""
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist.")
    return read_table(path, id_col)


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV, or parquet when ``path`` ends in .parquet/.pq."""
    write_table(frame, path)


def load_forecaster(cfg: DictConfig) -> Any:
    """The forecaster named by ``ckpt_path`` or ``model_dir`` (exactly one)."""
    from latentode.forecast import LatentODEForecaster
    from latentode.forecast.calibration import subsets_mode

    ckpt, model_dir = cfg.get("ckpt_path"), cfg.get("model_dir")
    if (ckpt is None) == (model_dir is None):
        raise ValueError("latentode-predict needs exactly one of ckpt_path= (a latentode-train "
                         f"checkpoint) and model_dir= (a saved forecaster); got ckpt_path={ckpt}"
                         f", model_dir={model_dir}.")
    overrides = list(cfg.get("overrides") or [])
    subsets = subsets_mode(cfg.get("subsets", "auto"))
    if ckpt is not None:
        return LatentODEForecaster.from_run(str(ckpt), overrides, subsets=subsets)
    if overrides:  # a saved forecaster is built already: they would do nothing, silently
        raise ValueError(f"overrides={overrides} apply to a run's config (ckpt_path=...); a saved "
                         "forecaster (model_dir=...) is used as saved: drop them.")
    if subsets != "auto":  # likewise: it predicts with the subsets it was saved with
        raise ValueError(f"subsets={cfg.get('subsets')} chooses how a forecaster built from a "
                         "run (ckpt_path=...) conditions; a saved forecaster (model_dir=...) "
                         "keeps its own: drop subsets.")
    return LatentODEForecaster.load(str(model_dir))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) or OmegaConf.is_list(
        value) else value


def noise_option(value: Any) -> bool | str:
    """``noise=`` as ``LatentODEForecaster.predict`` takes it: ``calibrated`` (or true),
    ``model``, ``none`` (or false, null)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "calibrated"
    mode = str(value).strip().lower()
    if mode not in ("calibrated", "model", "none"):
        raise ValueError(f"noise must be calibrated, model or none, got {value!r}.")
    return mode


@contextmanager
def each_warning_once() -> Iterator[None]:
    """Show each warning text once: the probabilities, the forecasts and the plot each read the
    input frame, and its warnings (duplicate rows, say) would otherwise repeat per reading
    (Python's own once-per-location registry is reset whenever a library changes a filter)."""
    shown, seen = warnings.showwarning, set()

    def show(message, category, filename, lineno, file=None, line=None):
        key = (category, str(message))
        if key not in seen:
            seen.add(key)
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Run ``latentode-predict`` as ``cfg`` says; returns the frame written to ``output``."""
    with each_warning_once():
        return _predict(cfg)


def _predict(cfg: DictConfig) -> pd.DataFrame:
    refuse_foreign_options(cfg, "predict", "latentode-predict")
    for key in ("output", "proba_output"):  # a parquet output without an engine: said first
        if cfg.get(key) is not None:
            check_writable(str(cfg[key]))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    holdout = score_mode(cfg)  # before the rebuild and calibration (seconds to minutes)
    forecaster = load_forecaster(cfg)
    save_dir = cfg.get("save_dir")
    if save_dir is not None:
        if cfg.get("model_dir") is not None:
            raise ValueError(f"save_dir={save_dir} saves a forecaster built from a run "
                             "(ckpt_path=...); model_dir= is one saved already: drop save_dir.")
        # the run's rebuild and the noise calibration (seconds to minutes) done once:
        # later calls take model_dir= and answer exactly as this one
        log.info("forecaster saved to %s (later: model_dir=%s)", forecaster.save(str(save_dir)),
                 save_dir)
    spec = forecaster.spec
    frame = read_frame(Path(str(cfg.input)), cfg.get("id_col") or spec.id_col)
    renames = {cfg[k]: getattr(spec, k) for k in ("id_col", "time_col")
               if cfg.get(k) is not None and cfg[k] != getattr(spec, k)}
    frame = frame.rename(columns=renames)
    time_col = spec.time_col
    t_style = None  # ISO text with a 'T' in: the same style out (a CSV's datetimes use ' ')
    if spec.time.kind == "datetime" and time_col in frame.columns and not (
        pd.api.types.is_datetime64_any_dtype(frame[time_col].dtype)
    ):
        t_style = iso_separator(frame[time_col])
        frame = iso_times(frame, time_col)  # ISO 8601 only: other text is refused, not guessed
    if holdout is not None:
        return _score(cfg, forecaster, frame, holdout)
    labels = _plain(cfg.get("plot_labels")) or None
    if cfg.get("plot") and labels:  # checked before the work, not after it
        from latentode.forecast.plotting import check_channel_labels

        check_channel_labels(spec, labels)
    proba_path = cfg.get("proba_output")
    if proba_path is not None:  # before the forecasts: a model without a classifier fails fast
        proba = forecaster.predict_proba(frame, num_samples=cfg.num_samples, seed=cfg.seed,
                                         batch_size=cfg.batch_size)
    pred = forecaster.predict(
        frame, _plain(cfg.get("times")), horizon=cfg.get("horizon"), freq=cfg.get("freq"),
        n=cfg.get("n"), num_samples=cfg.num_samples,  # checked there: 1.5 or true are errors
        quantiles=list(_plain(cfg.quantiles) or []), seed=cfg.seed,
        noise=noise_option(cfg.get("noise", "calibrated")), batch_size=cfg.batch_size,
    )
    pred = pred.rename(columns={v: k for k, v in renames.items()})
    out = Path(str(cfg.output))
    written = pred
    if t_style == "T" and out.suffix not in (".parquet", ".pq"):
        column = {v: k for k, v in renames.items()}.get(time_col, time_col)  # the user's name
        written = pred.assign(**{column: pred[column].map(lambda t: t.isoformat(sep=t_style))})
    write_frame(written, out)
    log.info("%d rows (%d series) written to %s", len(pred), pred.iloc[:, 0].nunique(), out)
    if proba_path is not None:
        proba = proba.rename(columns={v: k for k, v in renames.items()})
        write_frame(proba, Path(str(proba_path)))
        log.info("label probabilities of %d series written to %s", len(proba), proba_path)
    if cfg.get("plot"):
        fig = forecaster.plot(frame, pred.rename(columns=renames),
                              max_series=int(cfg.get("plot_series") or 4),
                              channel_labels=labels)
        plot_path = Path(str(cfg.plot))
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot_path, dpi=100)
        log.info("plot written to %s", plot_path)
    return pred


DEFAULT_QUANTILES = [0.05, 0.5, 0.95]
"""``quantiles``' default in conf/predict.yaml (``score=`` refuses others: it uses none)."""

SCORE_EXCLUDES = ("times", "horizon", "freq", "n", "proba_output", "plot")
"""Options of the forecasts that ``score=`` would leave unused (refused beside it)."""


def score_mode(cfg: DictConfig) -> str | None:
    """``score=`` checked before any work: ``points``, ``end`` or None (forecasts)."""
    value = cfg.get("score")
    if value is None or value is False:
        return None
    mode = str(value).strip().lower()
    if mode not in ("points", "end"):
        raise ValueError(f"score must be points (hide random times of each series) or end (the "
                         f"end of each series' span), got {value!r}.")
    given = [k for k in SCORE_EXCLUDES if cfg.get(k) is not None]
    if given:
        raise ValueError(f"score={mode} writes scores, not forecasts: drop {', '.join(given)} "
                         "(the hidden times are what it predicts).")
    quantiles = _plain(cfg.get("quantiles"))
    if quantiles is not None and (not isinstance(quantiles, list) or sorted(
            float(q) for q in quantiles) != DEFAULT_QUANTILES):
        raise ValueError(f"score={mode} scores the central score_level interval; "
                         f"quantiles={quantiles} are for forecasts: drop them (score_level=0.8 "
                         "scores the 10th to 90th percentile).")
    if noise_option(cfg.get("noise", "calibrated")) != "calibrated":
        raise ValueError(f"score={mode} scores intervals with the calibrated noise; "
                         f"noise={cfg.get('noise')} is for forecasts: drop it.")
    from latentode.forecast.scoring import check_fraction_and_level

    check_fraction_and_level(cfg.get("score_fraction"), cfg.get("score_level"),
                             ("score_fraction", "score_level"))
    return mode


def _score(cfg: DictConfig, forecaster: Any, frame: pd.DataFrame, holdout: str) -> pd.DataFrame:
    """``score=``: the forecaster's held-out scores on ``frame``, written to ``output``."""
    table = forecaster.score(frame, holdout, fraction=float(cfg.score_fraction),
                             level=float(cfg.score_level), num_samples=cfg.num_samples,
                             seed=cfg.seed, batch_size=cfg.batch_size)
    table = table.reset_index()
    write_frame(table, Path(str(cfg.output)))
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        log.info("scores of %d series (score=%s, score_fraction=%s), data units:\n%s",
                 table.attrs.get("series", 0), holdout, cfg.score_fraction,
                 table.to_string(index=False))
    log.info("scores written to %s", cfg.output)
    return table


_TASK_STARTED = [False]  # whether hydra_main's task ran (else Hydra failed to compose)


def main() -> None:
    """Entry point of ``latentode-predict``: Hydra's app; a misspelt key or option on the
    command line gets a line naming the closest one after Hydra's error
    (:mod:`latentode.cli.typos`)."""
    _TASK_STARTED[0] = False
    run_app(hydra_main, "predict", "latentode-predict", plus_refused=False,
            started=lambda: _TASK_STARTED[0])


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra app of ``latentode-predict`` (Hydra parses the command line)."""
    _TASK_STARTED[0] = True
    quiet_known_warnings()
    with input_errors("latentode-predict"):
        predict(cfg)


if __name__ == "__main__":
    main()
