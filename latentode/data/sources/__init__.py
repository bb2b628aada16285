"""Dataset sources: pure functions that return a wide pandas DataFrame.

Every source module exposes ``load(...) -> pandas.DataFrame`` with one row per (series, time):
columns ``series_id``, ``time``, then one float column per channel (NaN = not observed), plus the
extra columns its docstring lists (``static_*`` covariates, ``label``). Rows are sorted by
``series_id`` then ``time``. Each module also has ``CHANNELS`` (the channel columns) and
``FRAME_KWARGS`` (the keyword arguments for the core layer's ``from_dataframe``).

- ``periodic``: the latent ODE paper's 1-D toy of noisy sine waves on one shared irregular grid.
- ``co2``: weekly Mauna Loa CO2 (1958-2001) as shipped with statsmodels, real gaps included.
- ``physionet``: the PhysioNet/CinC 2012 challenge ICU records, parsed from the user's own copy.
- ``hopper``: the paper's MuJoCo hopper trajectories, generated locally (extra ``[hopper]``).

This package deliberately imports none of them (nor the core data layer): import the one you
need, e.g. ``from latentode.data.sources import periodic``.
"""

__all__ = ["co2", "hopper", "periodic", "physionet"]
