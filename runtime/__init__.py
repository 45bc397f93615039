"""PrecisionOps runtime: formats, recipes, plans, calibration, engines, evaluation, serving."""
