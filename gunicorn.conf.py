"""gunicorn's settings for the HTTP target (the image's CMD and the tests' real server).

    gunicorn -c gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'

Everything is in :func:`function.infra.server.gunicorn_settings`, read from the same ``Config``.
"""

from function.config import Config
from function.infra.server import gunicorn_settings

globals().update(gunicorn_settings(Config.from_env()))


def post_worker_init(worker: object) -> None:
    """Start the serving app as soon as the worker is up, in the worker (never in the arbiter, which forks
    it: threads and child processes do not cross a fork), rather than on its first request."""
    from function import app

    app.serving()
