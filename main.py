"""Entry points: the functions-framework targets and the command line.

    functions-framework --target classify_http                               # HTTP API
    functions-framework --target classify_event --signature-type cloudevent  # bucket events
    python main.py [PHOTO ...]                                               # CLI

Each only translates; the work is in ``function/``, wired by ``function/app.py``.
"""


if __name__ == "__main__":  # the CLI: no web framework to import on its cold path
    from function import cli

    cli.run()

import flask  # noqa: E402
import functions_framework  # noqa: E402
from cloudevents.http import CloudEvent  # noqa: E402

from function import app  # noqa: E402
from function.api import events, http  # noqa: E402


@functions_framework.http
def classify_http(request: flask.Request) -> flask.Response:
    return http.handle(request, app.serving())


@functions_framework.cloud_event
def classify_event(cloud_event: CloudEvent) -> None:
    events.handle(cloud_event, app.serving())


# Serving: read the configuration now, so a bad value stops the start-up instead of every request.
app.serving()
if flask.has_app_context():  # functions-framework runs this module inside its new app's context
    http.install(flask.current_app, app.serving())
