"""The Celery app test workers run: the production app with a 3 s visibility timeout (and a fault hook).

Redis then re-delivers the task of a SIGKILLed worker within seconds instead of hours. Run as
`celery -A tests.controlplane.jobs.worker_app worker`; settings come from POPS_* as in production.
"""
import os
import time
from pathlib import Path

from controlplane.celery_app import create_celery
from controlplane.settings import get_settings

VISIBILITY_TIMEOUT_S = 3

app = create_celery(get_settings(), visibility_timeout_s=VISIBILITY_TIMEOUT_S, restore_interval_s=1)
import controlplane.jobs.tasks  # noqa: E402,F401  (registers the tasks on this app)

# Fault injection for the SIGKILL, database-outage and Redis-restart tests: hold the engine build
# between writing the weights into its temporary folder and renaming it, for as many seconds as the
# file named by JOBS_TEST_ENGINE_WRITE_DELAY_FILE says (read at every build, so a test can change it).
_DELAY_FILE = os.environ.get("JOBS_TEST_ENGINE_WRITE_DELAY_FILE")
if _DELAY_FILE:
    import importlib

    _engine_build = importlib.import_module("runtime.engines.build")  # the module (the package exports `build`)
    _save_file = _engine_build.save_file

    def _slow_save_file(*args, **kwargs):
        _save_file(*args, **kwargs)
        try:
            time.sleep(float(Path(_DELAY_FILE).read_text() or 0))
        except FileNotFoundError:
            pass

    _engine_build.save_file = _slow_save_file
