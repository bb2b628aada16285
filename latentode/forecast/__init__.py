"""Forecasting for users: ``LatentODEForecaster`` (DataFrame in, DataFrame out) and the coverage
of posterior predictive intervals. See ``forecaster.py`` for how predictions are made.

    from latentode import LatentODEForecaster
"""

from .coverage import interval_coverage, interval_hits
from .forecaster import LatentODEForecaster

__all__ = ["LatentODEForecaster", "interval_coverage", "interval_hits"]
