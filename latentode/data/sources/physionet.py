"""PhysioNet/CinC Challenge 2012 ICU records, parsed from the user's own copy.

Nothing is downloaded: get ``set-a.tar.gz`` and ``Outcomes-a.txt`` from
https://physionet.org/content/challenge-2012/1.0.0/ (set-b/set-c and their outcomes work the same
way) and extract so that ``root/set-a/<RecordID>.txt`` and ``root/Outcomes-a.txt`` exist (the
paper code's download, ``PhysioNet/raw/set-a/`` below its data directory, is found too).
``subset=["a", "b"]`` pools sets, as the paper code did for interpolation (8,000 patients).

Format (one file per ICU stay, the first 48 hours): header ``Time,Parameter,Value``, then rows
such as ``07:32,HR,88``; ``Time`` is ``HH:MM`` since admission (hours may exceed 23). The
general descriptors RecordID, Age, Gender, Height, ICUType and Weight come first, at ``00:00``;
-1 means unknown.

What ``load`` returns and how it relates to the paper code (``physionet.py`` of
github.com/YuliaRubanova/latent_ode):

- Channels: the paper's ``PhysioNet.params`` has 41 entries, the 4 descriptors Age, Gender,
  Height, ICUType followed by the challenge's 37 time series (Weight first, then Albumin ... WBC).
  Here the 37 time series are the channels (``CHANNELS``, the paper's order) and the descriptors
  are static covariates ``static_Age``, ``static_Gender``, ``static_Height``, ``static_ICUType``,
  ``static_Weight`` (NaN where -1). Pass ``variables="paper"`` (``PAPER_PARAMS``) to get the
  paper's 41-channel layout, the descriptors then being channels observed at time 0 (NaN,
  i.e. unobserved, where -1: the paper stored -1 as an observed value).
- Weight is both: the ``00:00`` descriptor is ``static_Weight`` and, unless -1, also a Weight
  observation at time 0 (as in the paper); later Weight rows are ordinary observations. Weight
  rows of -1 are never observations.
- Time is in hours (``HH + MM / 60``). Several rows for one parameter at one time are averaged
  (the paper's ``reduce="average"``). ``quantization=q`` replaces each time by
  ``round(t / q) * q`` exactly as the paper does (its default is ``--quantization 0.1``, i.e. 6
  minutes; Python's ``round``, halves to even) and averages what falls on the same grid point.
  The default ``None`` keeps the exact minutes, which a latent ODE handles natively.
- Rows: one per (patient, time) at which at least one selected channel is observed (the paper
  always started each patient at time 0; here time 0 appears only when something was observed
  then). A patient with no observation at all (only descriptors; set-a has a few) is dropped,
  counted in a warning, because ``from_dataframe`` refuses series without observations;
  ``keep_empty=True`` keeps it as one row at time 0 with every channel NaN instead.
- ``label``: In-hospital_death from ``Outcomes-<set>.txt`` (1 = died in hospital, 0 = survived),
  the same on every row of a patient, float64; NaN (with a warning) for a patient missing from
  the outcomes file, or for everyone when no outcomes file is found (the paper used labels only
  for set-a).
- Rows whose parameter is none of the known names are skipped and counted in one warning that
  names where each first occurs; ``RecordID`` rows are checked against the file name. A line
  without exactly 3 fields, a bad time or value, or a byte that is not UTF-8 is an error naming
  the file and line.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd

DESCRIPTORS: list[str] = ["Age", "Gender", "Height", "ICUType", "Weight"]
"""General descriptors recorded at 00:00, returned as ``static_<name>`` columns."""

CHANNELS: list[str] = [
    "Weight", "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine",
    "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP",
    "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets",
    "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC",
]  # fmt: skip
"""The challenge's 37 time series, in the order of the paper code's ``params``."""

PAPER_PARAMS: list[str] = ["Age", "Gender", "Height", "ICUType", *CHANNELS]
"""The paper code's 41 input channels (``PhysioNet.params``), in its order."""

STATIC_COLUMNS: list[str] = [f"static_{name}" for name in DESCRIPTORS]
"""Static covariate columns, always present, float64, NaN = unknown."""

LABEL_COLUMN: str = "label"
OUTCOME_COLUMN: str = "In-hospital_death"
"""The column of ``Outcomes-<set>.txt`` that becomes ``label``."""

FRAME_KWARGS: dict[str, object] = {
    "id_col": "series_id",
    "time_col": "time",
    "value_cols": CHANNELS,
    "static_cols": STATIC_COLUMNS,
    "label_col": LABEL_COLUMN,
    "label_per": "series",
    "empty_channels": "warn",  # a subset of records may lack a rare lab altogether
}
"""Keyword arguments for the core layer's ``from_dataframe`` for ``load(root)``; see
``frame_kwargs`` when ``variables`` is given."""

_HEADER = ["Time", "Parameter", "Value"]
_STATIC_ONLY = {"Age", "Gender", "Height", "ICUType"}
_KNOWN = {"RecordID", *PAPER_PARAMS}


def frame_kwargs(variables: Sequence[str] | str | None = None,
                 labels: bool = True) -> dict[str, object]:
    """``from_dataframe`` keyword arguments matching ``load(root, variables=variables,
    labels=labels)``."""
    out = {**FRAME_KWARGS, "value_cols": _select(variables)}
    if not labels:
        out.pop("label_col")
        out.pop("label_per")
    return out


def load(
    root: str | Path,
    quantization: float | None = None,
    variables: Sequence[str] | str | None = None,
    *,
    subset: str | Sequence[str] = "a",
    keep_empty: bool = False,
    labels: bool = True,
) -> pd.DataFrame:
    """Parse one set of the PhysioNet 2012 challenge, or several pooled, into a wide DataFrame
    (see module doc).

    Args:
        root: the directory holding ``set-<subset>/`` and ``Outcomes-<subset>.txt`` (or the
            paper code's layout, ``raw/set-<subset>/`` or ``PhysioNet/raw/set-<subset>/`` below
            it), or the set directory itself (its outcomes file is then looked for beside it and
            inside it).
        quantization: ``None`` keeps exact times; a positive number of hours rounds every time
            to that grid (the paper used 0.1) and averages what then coincides.
        variables: channels to keep, a subset of ``PAPER_PARAMS`` in the order wanted; ``None``
            means ``CHANNELS``, ``"paper"`` all of ``PAPER_PARAMS`` (the paper code's 41
            channels). Age, Gender, Height and ICUType become time-0 channels when listed
            (they are always in the ``static_`` columns too).
        subset: the set's letter when ``root`` is the parent directory (``"a"``, ``"b"``,
            ``"c"``), or a list of them to pool (``["a", "b"]``: the paper code's 8,000
            patients for interpolation; RecordIDs are unique across the challenge's sets).
        keep_empty: keep patients without any observed selected channel as one all-NaN row at
            time 0 (default: drop them with a warning).
        labels: read the outcomes file into ``label``; False leaves the file alone (no warning
            when it is missing, no error when it is malformed) and the frame without ``label``
            (``frame_kwargs(variables, labels=False)`` matches it).

    Returns:
        ``series_id`` (int64 RecordID), ``time`` (float64 hours since admission), one float64
        column per selected channel (NaN = not observed), ``static_Age``, ``static_Gender``,
        ``static_Height``, ``static_ICUType``, ``static_Weight`` and (``labels=True``) ``label``
        (float64 0/1, NaN = unknown), sorted by ``series_id`` then ``time``.

    Raises:
        FileNotFoundError: no set directory where expected.
        ValueError: a malformed file (named, with the line), a bad argument, or an outcomes file
            without the needed columns.
    """
    channels = _select(variables)
    step = _check_quantization(quantization)
    if not isinstance(subset, str):
        return _load_pooled(Path(root), quantization, variables, subset, keep_empty, labels)
    set_dir, outcome_paths = _locate(Path(root), subset)
    record_ids, records = _read_records(set_dir)

    static = _static_table(records, record_ids)
    sid, times, table = _observations(records, channels, step)
    if not len(sid) and not keep_empty:
        raise ValueError(
            f"physionet: none of the {len(record_ids)} record(s) in {set_dir} holds an observed "
            f"value of the selected channels ({_shown(channels)}): each holds at most its "
            "header and descriptors. Are the files complete (extracted in full)? keep_empty=True "
            "keeps such patients as all-NaN rows."
        )
    empty = np.setdiff1d(np.asarray(record_ids, dtype=np.int64), sid)
    if len(empty) and not keep_empty:
        warnings.warn(
            f"physionet: dropped {len(empty)} patient(s) with no observed value in the selected "
            f"channels (e.g. RecordID {empty[:5].tolist()}); pass keep_empty=True to keep each "
            "as one all-NaN row at time 0.",
            UserWarning,
            stacklevel=2,
        )
        dropped = set(empty.tolist())
        record_ids = [r for r in record_ids if r not in dropped]
    elif len(empty):  # one all-NaN row at time 0 each, then back into (id, time) order
        sid = np.concatenate([sid, empty])
        times = np.concatenate([times, np.zeros(len(empty))])
        table = np.concatenate([table, np.full((len(channels), len(empty)), np.nan)], axis=1)
        order = np.lexsort((times, sid))
        sid, times, table = sid[order], times[order], table[:, order]

    patient = np.searchsorted(static.index.to_numpy(), sid)  # static is sorted by RecordID
    columns: dict[str, np.ndarray] = {"series_id": sid, "time": times}
    columns |= dict(zip(channels, table, strict=True))
    columns |= {name: static[name].to_numpy()[patient] for name in STATIC_COLUMNS}
    if labels:  # (without: no label column, so that no caller reads NaN labels as data)
        outcome = _read_labels(outcome_paths, record_ids)
        columns[LABEL_COLUMN] = outcome.reindex(static.index).to_numpy(
            dtype=np.float64)[patient]
    return pd.DataFrame(columns, copy=False)


def _load_pooled(
    root: Path,
    quantization: float | None,
    variables: Sequence[str] | str | None,
    subsets: Sequence[str],
    keep_empty: bool,
    labels: bool = True,
) -> pd.DataFrame:
    """Several sets, each parsed as one, then stacked; a RecordID in two of them is refused."""
    names = [str(s) for s in subsets]
    if not names or len(set(names)) != len(names):
        raise ValueError(
            f"physionet.load: subset must be a set letter or a list of distinct ones, got "
            f"{names}."
        )
    if root.is_dir() and any(_is_record(p) for p in root.glob("*.txt")):
        raise ValueError(
            f"physionet: {root} holds record files itself; to pool sets {names}, give root as "
            "the directory that holds set-a/, set-b/ ... side by side."
        )
    frames = []
    for name in names:
        try:
            frames.append(load(root, quantization, variables, subset=name,
                               keep_empty=keep_empty, labels=labels))
        except FileNotFoundError as error:
            found = [n for n in names if n != name
                     and any(c.is_dir() for c in _set_candidates(root, n))]
            if not found:
                raise
            which = found if len(found) > 1 else found[0]
            raise FileNotFoundError(
                f"{error} (Pooling sets {names}; to read the set(s) found alone: "
                f"subset={which!r}.)") from None
    seen: dict[int, str] = {}
    for name, frame in zip(names, frames, strict=True):
        for record in frame["series_id"].unique().tolist():
            if record in seen:
                raise ValueError(
                    f"physionet: RecordID {record} is in both set-{seen[record]} and "
                    f"set-{name}; the challenge's sets do not share patients: is one set copied "
                    "into the other?"
                )
            seen[record] = name
    out = pd.concat(frames, ignore_index=True)
    order = np.lexsort((out["time"].to_numpy(), out["series_id"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _shown(names: Sequence[str], limit: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------------- arguments


def _select(variables: Sequence[str] | str | None) -> list[str]:
    if variables is None:
        return list(CHANNELS)
    if isinstance(variables, str):
        if variables == "paper":
            return list(PAPER_PARAMS)
        raise ValueError(
            f"physionet: variables must be a list of names or 'paper' (the paper code's 41 "
            f"channels), got the string {variables!r}; write [{variables!r}]."
        )
    chosen = list(variables)
    unknown = [v for v in chosen if v not in PAPER_PARAMS]
    if unknown:
        raise ValueError(
            f"physionet: unknown variables {unknown}; choose from {PAPER_PARAMS} (names are "
            "case-sensitive)."
        )
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"physionet: variables must be non-empty and distinct, got {chosen}.")
    return chosen


def _check_quantization(quantization: float | None) -> float | None:
    if quantization is None:
        return None
    ok = isinstance(quantization, Real) and not isinstance(quantization, bool)
    if not ok or not math.isfinite(quantization) or quantization <= 0:
        raise ValueError(
            f"physionet.load: quantization must be None or a positive number of hours (the "
            f"paper used 0.1 = 6 minutes), got {quantization!r}."
        )
    return float(quantization)


def _locate(root: Path, subset: str) -> tuple[Path, list[Path]]:
    """The set directory and where its outcomes file may be."""
    if not re.fullmatch(r"[A-Za-z0-9]+", str(subset)):
        raise ValueError(f"physionet.load: subset must be a set letter like 'a', got {subset!r}.")
    found = next((c for c in _set_candidates(root, subset) if c.is_dir()), None)
    if found is not None:
        set_dir = found
    elif root.is_dir() and any(_is_record(p) for p in root.glob("*.txt")):
        set_dir = root
        match = re.fullmatch(r"set-(\w+)", root.name)
        subset = match.group(1) if match else subset
    else:
        raise FileNotFoundError(_not_found(root, subset))
    outcomes = f"Outcomes-{subset}.txt"
    return set_dir, [set_dir.parent / outcomes, set_dir / outcomes]


def _set_candidates(root: Path, subset: str) -> list[Path]:
    """Where set ``subset`` may be below ``root``: ours (``root/set-a``), then the paper code's
    download layout (``raw/set-a``, ``PhysioNet/raw/set-a``)."""
    name = f"set-{subset}"
    return [root / name, root / "raw" / name, root / "PhysioNet" / "raw" / name]


def _not_found(root: Path, subset: str) -> str:
    """Why no set directory is at ``root``, and what to do: an archive not yet extracted is
    named with the command that extracts it."""
    where = root.parent if root.is_file() else root
    suffixes = (".tar.gz", ".tgz", ".tar", ".zip")
    candidates = [root] if root.is_file() else [root / f"set-{subset}{s}" for s in suffixes]
    archive = next((p for p in candidates if p.is_file() and p.name.endswith(suffixes)), None)
    if archive is not None:
        extract = (f"unzip {archive} -d {where}" if archive.name.endswith(".zip")
                   else f"tar xzf {archive} -C {where}" if archive.name.endswith("gz")
                   else f"tar xf {archive} -C {where}")
        return (f"PhysioNet 2012 data: {archive} is an archive; the loader reads the extracted "
                f"record files. Extract it ({extract}) and point root at {where} (the "
                f"directory then holding {where / f'set-{subset}'}/).")
    state = "is not a directory" if not root.is_dir() else "holds no set directory"
    return (
        f"PhysioNet 2012 data not found: {root} {state}. Expected {root / f'set-{subset}'}/ "
        f"(the challenge's <RecordID>.txt files) with {root / f'Outcomes-{subset}.txt'} "
        "beside it, or root pointing at the set directory itself. Download set-"
        f"{subset}.tar.gz and Outcomes-{subset}.txt from "
        "https://physionet.org/content/challenge-2012/1.0.0/ and extract them there."
    )


def _is_record(path: Path) -> bool:
    return path.is_file() and path.stem.isdigit()


# ----------------------------------------------------------------------------------- parsing


def _read_records(set_dir: Path) -> tuple[list[int], pd.DataFrame]:
    """All rows of all record files: ``series_id``, ``line``, ``param``, ``hh``, ``mm``, ``value``.

    Files are concatenated and parsed by one vectorised ``read_csv`` (seconds for all of set-a);
    if anything in it looks wrong, a slower checked parse names the file, line and field.
    """
    files = sorted(
        (p for p in set_dir.glob("*.txt") if not p.name.startswith("Outcomes")),
        key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name),
    )
    bad = [p.name for p in files if not p.stem.isdigit()]
    if bad:
        raise ValueError(
            f"physionet: {set_dir} holds files not named <RecordID>.txt: {bad[:5]}; move them "
            "out of the set directory."
        )
    if not files:
        nested = sorted(d for d in set_dir.iterdir() if d.is_dir()
                        and any(_is_record(p) for p in d.glob("*.txt")))
        hint = (f" They are one level down, in {nested[0]}: point root there (or at {set_dir}"
                f"'s copy of its contents)." if nested else "")
        raise FileNotFoundError(f"physionet: no <RecordID>.txt files in {set_dir}.{hint}")

    record_ids: list[int] = []
    chunks: list[str] = []
    counts: list[int] = []
    line_numbers: list[np.ndarray] = []
    for path in files:
        lines = _text(path).splitlines()
        header = [h.strip() for h in lines[0].split(",")] if lines else []
        if header != _HEADER:
            raise ValueError(
                f"physionet: {path} starts with {lines[0] if lines else '(empty file)'!r}, "
                f"expected the header {','.join(_HEADER)!r}; is this a challenge record file?"
            )
        body = lines[1:]
        numbers = np.arange(2, len(body) + 2)
        text = "\n".join(body)
        if text.count(",") != 2 * len(body):  # cheap check first; then skip blank lines
            numbers = numbers[[bool(line.strip()) for line in body]]
            body = [line for line in body if line.strip()]
            text = "\n".join(body)
        record_ids.append(int(path.stem))
        if body:
            chunks.append(text)
        counts.append(len(body))
        line_numbers.append(numbers)

    rows = pd.DataFrame(
        {
            "series_id": np.repeat(np.asarray(record_ids, dtype=np.int64), counts),
            "line": np.concatenate(line_numbers).astype(np.int64),
        }
    )
    big = "\n".join(chunks)
    # every line has 3 fields (one file's 4-field line can hide another's 2 in the cheap check)
    wrong = _commas_per_line(big) != 2 if len(rows) else np.zeros(0, dtype=bool)
    if wrong.any():
        _raise_at(wrong, rows, set_dir, pd.Series(big.split("\n")), "line",
                  "expected the 3 fields Time,Parameter,Value; a decimal comma?")
    parsed = _parse_fast(big, len(rows)) if len(rows) else None
    if parsed is None:
        parsed = _parse_checked(big, rows, set_dir)
    rows = pd.concat([rows, parsed], axis=1)

    ids = (rows["param"] == "RecordID").to_numpy()
    wrong = np.flatnonzero(ids & (rows["value"] != rows["series_id"]).to_numpy())
    if len(wrong):
        i = int(wrong[0])
        raise ValueError(
            f"physionet: {set_dir / str(rows['series_id'].iat[i])}.txt line "
            f"{rows['line'].iat[i]}: bad RecordID {float(rows['value'].iat[i]):g} (it differs "
            "from the file name). Fix or remove it."
        )
    return record_ids, rows


def _text(path: Path) -> str:
    """A record file's text; one that is not UTF-8 (the challenge's files are ASCII) is named
    with the line of its first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(
            f"physionet: {path} line {line}: byte {raw[error.start]:#04x} is not UTF-8 text (the "
            "challenge's records are plain ASCII: a unit or symbol typed into a value?). Fix or "
            "remove that line."
        ) from None


def _commas_per_line(big: str) -> np.ndarray:
    """The number of commas on each ``\\n``-separated line of ``big`` (vectorised)."""
    data = np.frombuffer(big.encode("utf-8"), dtype=np.uint8)
    commas = np.flatnonzero(data == ord(","))
    ends = np.append(np.flatnonzero(data == ord("\n")), len(data))
    return np.diff(np.searchsorted(commas, ends), prepend=0)


def _parse_fast(big: str, n_rows: int) -> pd.DataFrame | None:
    """``HH:MM,Param,Value`` lines by the C parser, or None if anything is off."""
    if big.count(":") != n_rows:
        return None
    try:
        table = pd.read_csv(
            io.StringIO(big.replace(":", ",")),
            header=None,
            names=["hh", "mm", "param", "value"],
            dtype={"hh": np.int64, "mm": np.int64, "param": "category", "value": np.float64},
            na_filter=False,
            engine="c",
        )
    except (ValueError, TypeError, pd.errors.ParserError):
        return None
    names = table["param"].cat.categories
    ok = (
        len(table) == n_rows
        and (names == names.str.strip()).all()
        and (table["hh"].to_numpy() >= 0).all()
        and ((table["mm"].to_numpy() >= 0) & (table["mm"].to_numpy() < 60)).all()
        and np.isfinite(table["value"].to_numpy()).all()
    )
    return table if ok else None


def _parse_checked(big: str, rows: pd.DataFrame, set_dir: Path) -> pd.DataFrame:
    """The slow, strict parse: every field as text, the first bad one reported."""
    table = pd.read_csv(
        io.StringIO(big),
        header=None,
        names=_HEADER,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,
        engine="c",
    )
    raw_time = table["Time"].str.strip()
    raw_value = table["Value"].str.strip()
    parts = raw_time.str.extract(r"^(\d+):(\d+)$")
    hh = pd.to_numeric(parts[0]).to_numpy(dtype=np.float64)
    mm = pd.to_numeric(parts[1]).to_numpy(dtype=np.float64)
    _raise_at(np.isnan(hh) | ~(mm < 60), rows, set_dir, raw_time, "time", "expected HH:MM")
    value = pd.to_numeric(raw_value, errors="coerce").to_numpy(dtype=np.float64)
    _raise_at(~np.isfinite(value), rows, set_dir, raw_value, "value", "expected a number")
    return pd.DataFrame(
        {
            "hh": hh.astype(np.int64),
            "mm": mm.astype(np.int64),
            "param": table["Parameter"].str.strip().astype("category"),
            "value": value,
        }
    )


def _raise_at(
    bad: np.ndarray, rows: pd.DataFrame, set_dir: Path, raw: pd.Series, what: str, hint: str
) -> None:
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    path = set_dir / f"{rows['series_id'].iat[i]}.txt"
    raise ValueError(
        f"physionet: {path} line {rows['line'].iat[i]}: bad {what} {raw.iat[i]!r} "
        f"({hint}); {int(bad.sum())} such row(s) in the set. Fix or remove them."
    )


def _hours(rows: pd.DataFrame) -> np.ndarray:
    """``HH + MM / 60`` in float64, the paper's formula."""
    return rows["hh"].to_numpy(dtype=np.float64) + rows["mm"].to_numpy(dtype=np.float64) / 60.0


def _static_table(rows: pd.DataFrame, record_ids: list[int]) -> pd.DataFrame:
    """``static_*`` per patient: each descriptor's first occurrence (Weight's at 00:00)."""
    param = rows["param"].astype(object)
    at_zero = (rows["hh"] == 0) & (rows["mm"] == 0)
    is_static = param.isin(_STATIC_ONLY) | ((param == "Weight") & at_zero)
    first = rows.loc[is_static, ["series_id", "value"]].assign(param=param[is_static])
    first = first.drop_duplicates(["series_id", "param"], keep="first")
    table = first.pivot(index="series_id", columns="param", values="value")
    table = table.reindex(index=pd.Index(record_ids, dtype=np.int64), columns=DESCRIPTORS)
    table = table.astype("float64").where(table != -1)
    table.columns = STATIC_COLUMNS
    table.index.name = "series_id"
    return table


def _observations(
    rows: pd.DataFrame, channels: list[str], step: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average repeats and lay the selected channels out wide (rows with an observation only).

    Returns the series id and time of each row and the ``(channels, rows)`` values, sorted by
    id then time.
    """
    names = list(rows["param"].cat.categories)
    codes = rows["param"].cat.codes.to_numpy()
    unknown = [(n, np.flatnonzero(codes == i)) for i, n in enumerate(names) if n not in _KNOWN]
    if unknown:
        listing = ", ".join(
            f"{name!r} x{len(at)}, first in {rows['series_id'].iat[at[0]]}.txt line "
            f"{rows['line'].iat[at[0]]}" for name, at in unknown[:10])
        more = f", and {len(unknown) - 10} more name(s)" if len(unknown) > 10 else ""
        warnings.warn(
            f"physionet: skipped {sum(len(at) for _, at in unknown)} row(s) with unknown "
            f"parameter names ({listing}{more}); known names are RecordID and "
            "physionet.PAPER_PARAMS (case-sensitive).",
            UserWarning,
            stacklevel=3,
        )
    # Category code -> channel column (or -1: not selected / not a channel).
    column = np.array([channels.index(n) if n in channels else -1 for n in names] + [-1])
    channel = column[codes]  # code -1 (none) picks the trailing -1
    descriptor = np.isin(codes, [i for i, n in enumerate(names) if n in _STATIC_ONLY])
    sid = rows["series_id"].to_numpy()
    value = rows["value"].to_numpy()
    hh, mm = rows["hh"].to_numpy(), rows["mm"].to_numpy()
    hours = _hours(rows)

    # Descriptors other than Weight count once, at time 0; -1 (unknown) is never an observation.
    repeat = pd.DataFrame({"s": sid, "c": codes}).duplicated().to_numpy()
    keep = (channel >= 0) & ~(descriptor & repeat)
    sentinel_codes = [i for i, n in enumerate(names) if n in _STATIC_ONLY or n == "Weight"]
    keep &= ~(np.isin(codes, sentinel_codes) & (value == -1))
    if step is None:
        key = np.where(descriptor, 0, hh * 60 + mm)  # exact minutes
    else:
        key = np.where(descriptor, 0, np.round(hours / step).astype(np.int64))  # the paper
    sid, key, channel, value = sid[keep], key[keep], channel[keep], value[keep]

    order = np.lexsort((channel, key, sid))
    sid, key, channel, value = sid[order], key[order], channel[order], value[order]
    new_cell = np.ones(len(sid), dtype=bool)
    new_cell[1:] = (sid[1:] != sid[:-1]) | (key[1:] != key[:-1]) | (channel[1:] != channel[:-1])
    new_row = np.ones(len(sid), dtype=bool)
    new_row[1:] = (sid[1:] != sid[:-1]) | (key[1:] != key[:-1])
    starts = np.flatnonzero(new_cell)
    means = np.add.reduceat(value, starts) / np.diff(np.append(starts, len(value)))
    row_of_cell = np.cumsum(new_row)[starts] - 1

    table = np.full((len(channels), int(new_row.sum())), np.nan)  # channel-major: no transpose
    table[channel[starts], row_of_cell] = means
    row_key = key[new_row]
    if step is None:
        times = (row_key // 60).astype(np.float64) + (row_key % 60).astype(np.float64) / 60.0
    else:
        times = row_key * step
    return sid[new_row].astype(np.int64), np.asarray(times, dtype=np.float64), table


def _read_labels(paths: list[Path], record_ids: list[int]) -> pd.Series:
    """In-hospital death per record id (float64, NaN where unknown), from the outcomes file."""
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        warnings.warn(
            f"physionet: no outcomes file ({paths[0]} or {paths[1]}); label is NaN for every "
            "patient.",
            UserWarning,
            stacklevel=3,
        )
        return pd.Series(np.nan, index=pd.Index(record_ids, dtype=np.int64))
    table = pd.read_csv(path, skipinitialspace=True)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("RecordID", OUTCOME_COLUMN) if c not in table.columns]
    if missing:
        raise ValueError(
            f"physionet: {path} lacks the column(s) {missing} (found {list(table.columns)}); "
            "expected the challenge's RecordID,SAPS-I,SOFA,Length_of_stay,Survival,"
            "In-hospital_death."
        )
    ids = pd.to_numeric(table["RecordID"], errors="coerce")
    outcome = pd.to_numeric(table[OUTCOME_COLUMN], errors="coerce")
    # a malformed id anywhere is an error; an outcome only for the patients loaded
    loaded = ids.isin(record_ids)
    bad = ids.isna() | (ids != ids.round()) | (loaded & ~outcome.isin([0, 1]))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"physionet: {path} line {i + 2}: RecordID {table['RecordID'].iat[i]} with "
            f"{OUTCOME_COLUMN} {table[OUTCOME_COLUMN].iat[i]}; expected an integer id and 0 "
            "or 1."
        )
    ids = ids.astype(np.int64)
    if ids.duplicated().any():
        dup = int(ids[ids.duplicated()].iat[0])
        raise ValueError(f"physionet: {path} lists RecordID {dup} more than once.")
    labels = pd.Series(outcome.to_numpy(dtype=np.float64), index=ids.to_numpy())
    absent = [r for r in record_ids if r not in labels.index]
    if absent:
        warnings.warn(
            f"physionet: {len(absent)} patient(s) missing from {path} (e.g. {absent[:5]}); "
            "their label is NaN.",
            UserWarning,
            stacklevel=3,
        )
    return labels.reindex(pd.Index(record_ids, dtype=np.int64))
