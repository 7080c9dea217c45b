"""Entry points: the functions-framework targets and the command line.

    functions-framework --target classify_http                               # HTTP API
    functions-framework --target classify_event --signature-type cloudevent  # bucket events
    python main.py [PHOTO ...]                                               # CLI

Each only translates; the work is in ``function/``.
"""

import sys

import functions_framework

from function import cli, events, http, runtime


@functions_framework.http
def classify_http(request):
    return http.handle(request, runtime.classifier())


@functions_framework.cloud_event
def classify_event(cloud_event):
    events.handle(cloud_event, runtime.classifier())


if __name__ == "__main__":
    sys.exit(cli.main())

# Serving: read the configuration now, so a bad value stops the start-up instead of every request.
runtime.classifier()
