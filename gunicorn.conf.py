"""gunicorn's settings for the HTTP target (the image's CMD and the tests' real server).

    gunicorn -c gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'

Everything is in :func:`function.infra.server.gunicorn_settings`, read from the same ``Config``.
"""

from function.config import Config
from function.infra.server import gunicorn_settings

globals().update(gunicorn_settings(Config.from_env()))
