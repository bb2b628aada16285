"""Tables on disk: CSV, or parquet by suffix (``.parquet`` / ``.pq``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PARQUET = (".parquet", ".pq")


def read_table(path: str | Path, id_col: str | None = None) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame.

    A CSV's ``id_col`` is read as text and made integers only where every id is written as
    one (``7``, not ``007`` or ``7.0``): type inference made the ids ``007`` and ``7`` one
    series."""
    path = Path(path)
    if path.suffix in PARQUET:
        with _parquet_engine():
            return pd.read_parquet(path)
    if id_col is None:
        return pd.read_csv(path)
    header = pd.read_csv(path, nrows=0).columns
    if id_col not in header:
        return pd.read_csv(path)
    frame = pd.read_csv(path, dtype={id_col: str}, keep_default_na=False,
                        na_values={c: _NA for c in header if c != id_col})
    ids = frame[id_col]
    blank = ids.str.strip() == ""
    if blank.any():
        frame.loc[blank, id_col] = None  # refused by name later, as an empty id was
    present = ids[~blank]
    if len(present) and present.map(_canonical_int).all():
        frame[id_col] = pd.to_numeric(frame[id_col]).astype("Int64" if blank.any() else "int64")
    return frame


# pandas' default missing-value spellings, for the columns other than the id column
_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _canonical_int(text: str) -> bool:
    """``text`` is an integer as ``str(int)`` writes it (no leading zeros, sign or spaces)."""
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """``frame`` as CSV, or parquet when ``path`` ends in .parquet/.pq (without the index)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix not in PARQUET:
        frame.to_csv(path, index=False)
        return
    with _parquet_engine():
        frame.to_parquet(path, index=False)


class _parquet_engine:  # noqa: N801 (a context manager used as a phrase)
    """Turn pandas' missing-engine ImportError into the install line."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> bool:
        if kind is not None and issubclass(kind, ImportError) and "parquet" in str(error):
            raise ImportError(
                "parquet files need pyarrow: pip install 'latentode[parquet]' (or pip install "
                "pyarrow); or use a .csv file."
            ) from error
        return False
