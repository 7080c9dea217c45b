"""Entry points: the functions-framework targets and the command line.

    functions-framework --target classify_http                               # HTTP API
    functions-framework --target classify_event --signature-type cloudevent  # bucket events
    gunicorn -c gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'  # the image
    python main.py [PHOTO ...]                                               # CLI

Each only translates; the work is in ``function/``, wired by ``function/app.py``. Importing this
module builds nothing that runs: servers that import it in one process and serve from a forked one
(functions-framework's launcher, ``gunicorn --preload``) would otherwise hand the worker threads and
child processes that stayed behind in the parent. The serving app starts in the process that serves,
on its first request or from gunicorn's ``post_worker_init`` hook (gunicorn.conf.py).
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


# The configuration is read and checked now (plain data), so a bad value stops the start-up instead of
# every request.
config = app.configuration()
if flask.has_app_context():  # functions-framework runs this module inside its new app's context
    http.install(flask.current_app, config, app.request_meter)
