"""Calibration errors."""
from runtime.errors import InputError


class CalibrationError(InputError):
    """A scale was asked of something that was not calibrated, or calibration could not run."""
