"""gunicorn's settings for the HTTP target (the image's CMD and the tests' real server).

    gunicorn -c gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'

Everything is in :func:`function.infra.server.gunicorn_settings`, read from the same ``Config``.
"""

import gc

from function.config import Config
from function.infra.server import gunicorn_settings

globals().update(gunicorn_settings(Config.from_env()))


def post_fork(server: object, worker: object) -> None:
    """The worker imports the whole serving stack next, a cold start's longest step: the cyclic
    collector would scan the growing heap of modules over and over meanwhile, for almost no garbage."""
    gc.disable()


def post_worker_init(worker: object) -> None:
    """Start the serving app as soon as the worker is up, in the worker (never in the arbiter, which forks
    it: threads and child processes do not cross a fork), rather than on its first request.

    The modules loaded so far live as long as the process: frozen, the collector never scans them again."""
    from function import app

    try:
        gc.freeze()
    finally:
        gc.enable()
    app.serving()
