"""Weekly atmospheric CO2 at Mauna Loa, March 1958 to December 2001, from statsmodels.

The data ship inside statsmodels (``statsmodels.datasets.co2``; nothing is downloaded): 2284
weekly stamps (Saturdays, ``W-SAT``), 59 of them without a measurement. A real, long, univariate
series with real gaps, for forecasting.

Gaps: by default a week without a measurement has no row, so the series is irregularly sampled
(the gap shows as a longer step in ``time``). ``keep_missing=True`` keeps those weeks as rows
with ``co2`` NaN, which the core layer reads as "time point with no observation" (useful to ask a
model for values there).

statsmodels is an optional dependency, imported only when ``load`` runs.
"""

from __future__ import annotations

import pandas as pd
from pandas.tseries.frequencies import to_offset

CHANNELS: list[str] = ["co2"]
"""The one channel column: CO2 mole fraction in ppm."""

SERIES_ID: str = "mauna_loa"

FRAME_KWARGS: dict[str, object] = {
    "id_col": "series_id",
    "time_col": "time",
    "value_cols": CHANNELS,
}
"""Keyword arguments for the core layer's ``from_dataframe`` (``time`` holds datetimes)."""


def load(freq: str | None = None, *, keep_missing: bool = False) -> pd.DataFrame:
    """Load the weekly Mauna Loa CO2 series, optionally averaged to a coarser frequency.

    Args:
        freq: ``None`` for the weekly data as shipped; otherwise a pandas offset alias (e.g.
            ``"MS"`` for month starts, ``"QS"``, ``"YS"``) and each period holds the mean of its
            observed weeks (missing weeks are ignored, not counted as zero); a period without
            any observed week is missing. Stamps are pandas' ``resample`` labels.
        keep_missing: keep weeks (or periods) without a measurement as rows with ``co2`` NaN
            instead of dropping them.

    Returns:
        One series: ``series_id`` (``"mauna_loa"``), ``time`` (``datetime64[ns]``), ``co2``
        (float64 ppm), sorted by time.

    Raises:
        ImportError: statsmodels is not installed.
        ValueError: ``freq`` is not a pandas offset alias.
    """
    try:
        from statsmodels.datasets import co2 as sm_co2
    except ImportError as err:
        raise ImportError(
            "latentode.data.sources.co2 needs statsmodels, which ships the Mauna Loa CO2 data: "
            "run `pip install statsmodels` (or `pip install latentode[datasets]`)."
        ) from err

    series = sm_co2.load_pandas().data["co2"].astype("float64")
    series.index = pd.DatetimeIndex(series.index).as_unit("ns")
    if freq is not None:
        try:
            offset = to_offset(freq)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"co2.load: freq={freq!r} is not a pandas offset alias; pass e.g. 'MS' "
                "(month start), 'QS' or 'YS', or None for the weekly data."
            ) from err
        series = series.resample(offset).mean()
    if not keep_missing:
        series = series.dropna()

    return pd.DataFrame(
        {
            "series_id": SERIES_ID,
            "time": series.index.to_numpy(dtype="datetime64[ns]"),
            "co2": series.to_numpy(dtype="float64"),
        }
    )
