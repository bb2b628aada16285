"""``load_dataset(name, ...)``: every shipped source by name, as an ``IrregularDataset``.

The sources (``latentode.data.sources``) return plain DataFrames; this turns them into datasets
with each source's own column conventions, so a Hydra config can say ``name: periodic``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import IrregularDataset
from .files import read_table
from .frame import from_dataframe

SOURCES = ("periodic", "hopper", "physionet", "co2", "csv")


def load_dataset(name: str, **kwargs: Any) -> IrregularDataset:
    """Load a shipped source (``periodic``, ``hopper``, ``physionet``, ``co2``) or a file (``csv``).

    ``csv`` takes ``path=`` (CSV or parquet) plus any ``from_dataframe`` argument; the others
    take their source's ``load`` arguments and ``time_scale`` (``from_dataframe``'s: the model's
    unit of time, e.g. 48 for PhysioNet's 48-hour stays in hours). A source that fixes its
    split (hopper's in-order 80/20) hands it to the data module through ``dataset.split``.
    ``labels=False`` / ``static=False`` leave out a source's labels / static covariates (PhysioNet
    has both: a run that does not classify need not carry them, nor be warned that nothing reads
    them).
    """
    if name == "csv":
        if kwargs.get("path") is None:
            raise ValueError("the csv source needs path= (the CSV or parquet file; "
                             "latentode-train: data.dataset.path=your_file.csv).")
        _check_options(name, kwargs, from_dataframe, {"path"})
        return _load_file(**kwargs)
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(SOURCES)}.")
    module = importlib.import_module(f"latentode.data.sources.{name}")
    _check_options(name, kwargs, module.load, {"time_scale", "labels", "static"})
    time_scale = kwargs.pop("time_scale", None)
    labels, static = bool(kwargs.pop("labels", True)), bool(kwargs.pop("static", True))
    if "labels" in inspect.signature(module.load).parameters:  # (physionet: no outcomes read)
        kwargs["labels"] = labels
    frame = module.load(**kwargs)
    if hasattr(module, "frame_kwargs"):  # columns that depend on the load arguments
        frame_kwargs = dict(module.frame_kwargs(kwargs.get("variables")))
    else:
        frame_kwargs = dict(module.FRAME_KWARGS)
    channels = getattr(module, "CHANNELS", None)
    if "value_cols" not in frame_kwargs and isinstance(channels, (list, tuple)):
        frame_kwargs["value_cols"] = list(channels)  # the source's channels, not its split column
    if not labels:
        frame_kwargs.pop("label_col", None)
        frame_kwargs.pop("label_per", None)
    if not static:
        frame_kwargs.pop("static_cols", None)
    dataset = from_dataframe(frame, **frame_kwargs, time_scale=time_scale)
    if "split" in frame.columns:
        per_series = frame.groupby(dataset.id_col, sort=False)["split"].first()
        dataset.split = np.asarray(per_series.reindex(dataset.ids).astype(str))
    return dataset


def _check_options(name: str, kwargs: dict, takes: Any, extra: set[str]) -> None:
    """Refuse options ``takes`` does not accept, with the nearest one (a typo on the command
    line otherwise ends in a TypeError from deep inside)."""
    params = inspect.signature(takes).parameters
    allowed = {p for p, v in params.items()
               if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)} - {"df"} | extra
    unknown = sorted(set(kwargs) - allowed)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            hints.append(f"{key!r}: did you mean {close[0]!r}?")
    raise ValueError(
        f"the {name} data source has no option(s) {unknown}"
        + (f" ({' '.join(hints)})" if hints else "")
        + f"; it takes {sorted(allowed)} (latentode-train: data.dataset.<option>=...)."
    )


def _load_file(path: str | Path, **frame_kwargs: Any) -> IrregularDataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    # ISO 8601 text times are read as datetimes by from_dataframe; other text is refused there
    # (this read any format pandas guessed: day-first dates a month apart, clock times dated
    # today)
    return from_dataframe(read_table(path, frame_kwargs.get("id_col", "series_id")),
                          **frame_kwargs)
