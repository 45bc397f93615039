"""Jobs: calibrate, build and evaluate, queued to Celery workers (or run in-process when embedded)."""
