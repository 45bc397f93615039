"""Calibration: observers, activation/KV statistics from a corpus run, and the scales they give."""
from runtime.calibration.calibrate import calibrate
from runtime.calibration.errors import CalibrationError
from runtime.calibration.observers import (
    AMAX_FLOOR,
    OBSERVERS,
    AmaxHistoryObserver,
    MinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
    get_observer,
    register_observer,
)
from runtime.calibration.result import Calibration, CalibrationMeta
from runtime.calibration.statistics import KVStats, Log2Histogram, TensorStats

__all__ = [
    "AMAX_FLOOR", "OBSERVERS", "AmaxHistoryObserver", "Calibration", "CalibrationError", "CalibrationMeta",
    "KVStats", "Log2Histogram", "MinMaxObserver", "MseObserver", "Observer", "PercentileObserver", "TensorStats",
    "calibrate", "get_observer", "register_observer",
]
