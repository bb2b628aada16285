"""Forecasting for users: ``LatentODEForecaster`` (DataFrame in, DataFrame out), the calibrated
predictive noise behind its intervals (``calibration.py``) and the coverage of posterior
predictive intervals. See ``forecaster.py`` for how predictions are made.

    from latentode import LatentODEForecaster
"""

from .calibration import NoiseCalibration, calibrate_noise
from .coverage import interval_coverage, interval_hits
from .forecaster import LatentODEForecaster

__all__ = ["LatentODEForecaster", "NoiseCalibration", "calibrate_noise", "interval_coverage",
           "interval_hits"]
