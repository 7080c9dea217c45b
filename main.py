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
    # The framework hands over the event alone; the sender's proof is in the request's headers, which
    # flask.request holds while the framework calls this target.
    refusal = events.handle(cloud_event, app.serving(), flask.request.headers)
    if refusal is not None:
        flask.abort(http.answer_response(refusal))


# Serving: read the configuration now, so a bad value stops the start-up instead of every request.
app.serving()
if flask.has_app_context():  # functions-framework runs this module inside its new app's context
    http.install(flask.current_app, app.serving())
