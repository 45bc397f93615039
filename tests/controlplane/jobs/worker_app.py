"""The Celery app test workers run: the production app with a 3 s visibility timeout.

Redis then re-delivers the task of a SIGKILLed worker within seconds instead of hours. Run as
`celery -A tests.controlplane.jobs.worker_app worker`; settings come from POPS_* as in production.
"""
import os
import time

from controlplane.celery_app import create_celery
from controlplane.settings import get_settings

VISIBILITY_TIMEOUT_S = 3

app = create_celery(get_settings(), visibility_timeout_s=VISIBILITY_TIMEOUT_S, restore_interval_s=1)
import controlplane.jobs.tasks  # noqa: E402,F401  (registers the tasks on this app)

# Fault injection for the SIGKILL test: hold the engine build between writing the weights into its
# temporary folder and renaming it, so the kill lands while a half-made engine exists on disk.
_WRITE_DELAY_S = float(os.environ.get("JOBS_TEST_ENGINE_WRITE_DELAY_S", "0"))
if _WRITE_DELAY_S > 0:
    import importlib

    _engine_build = importlib.import_module("runtime.engines.build")  # the module (the package exports `build`)

    _save_file = _engine_build.save_file

    def _slow_save_file(*args, **kwargs):
        _save_file(*args, **kwargs)
        time.sleep(_WRITE_DELAY_S)

    _engine_build.save_file = _slow_save_file
