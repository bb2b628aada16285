"""Tables on disk: CSV, or parquet by suffix (``.parquet`` / ``.pq``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

PARQUET = (".parquet", ".pq")


def read_table(path: str | Path, id_col: str | None = None) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame.

    A CSV's ``id_col`` is read as text and made integers only where every id is written as
    one (``7``, not ``007`` or ``7.0``): type inference made the ids ``007`` and ``7`` one
    series. A CSV's rows are labelled with their lines in the file (the header is line 1), so
    that an error naming "row 7" points at line 7 (it named the 0-based row, 5)."""
    path = Path(path)
    if path.suffix in PARQUET:
        with _parquet_engine():
            return pd.read_parquet(path)
    if id_col is None or id_col not in pd.read_csv(path, nrows=0).columns:
        return _by_line(pd.read_csv(path))
    frame = pd.read_csv(path, dtype={id_col: str})
    present = frame[id_col].dropna()  # a missing id is refused by name later
    if len(present) and present.map(_canonical_int).all():
        kind = "Int64" if len(present) < len(frame) else "int64"
        frame[id_col] = pd.to_numeric(frame[id_col]).astype(kind)
    return _by_line(frame)


def _by_line(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its rows labelled 2, 3, ...: their lines in a CSV with one header line
    (blank lines, which read_csv skips, and quoted line breaks aside)."""
    frame.index = pd.RangeIndex(2, len(frame) + 2)
    return frame


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


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, a parquet ``path`` without an engine to write it (the
    install line), where it failed only after everything was computed."""
    if Path(path).suffix not in PARQUET:
        return
    import importlib.util

    if not any(importlib.util.find_spec(name) for name in ("pyarrow", "fastparquet")):
        with _parquet_engine():
            raise ImportError(f"{path}: writing parquet needs pyarrow or fastparquet")


class _parquet_engine:  # noqa: N801 (a context manager used as a phrase)
    """Turn pandas' missing-engine ImportError into the install line."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object
                 ) -> Literal[False]:
        if kind is not None and issubclass(kind, ImportError) and "parquet" in str(error):
            raise ImportError(
                "parquet files need pyarrow: pip install 'latentode[parquet]' (or pip install "
                "pyarrow); or use a .csv file."
            ) from error
        return False
