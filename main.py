"""Entry points: the functions-framework targets and the command line.

    functions-framework --target classify_http                               # HTTP API
    functions-framework --target classify_event --signature-type cloudevent  # bucket events
    python main.py [PHOTO ...]                                               # CLI

Each only translates; the work is in ``function/``.
"""

import sys

if __name__ == "__main__":  # the CLI: no web framework to import on its cold path
    from function import cli

    sys.exit(cli.main())

import functions_framework  # noqa: E402

from function import events, http, runtime  # noqa: E402


@functions_framework.http
def classify_http(request):
    return http.handle(request, runtime.classifier())


@functions_framework.cloud_event
def classify_event(cloud_event):
    events.handle(cloud_event, runtime.classifier())


# Serving: read the configuration now, so a bad value stops the start-up instead of every request.
runtime.classifier()
