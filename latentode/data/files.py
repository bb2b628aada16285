"""Tables on disk: CSV, or parquet by suffix (``.parquet`` / ``.pq``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PARQUET = (".parquet", ".pq")


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame."""
    path = Path(path)
    if path.suffix not in PARQUET:
        return pd.read_csv(path)
    with _parquet_engine():
        return pd.read_parquet(path)


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
