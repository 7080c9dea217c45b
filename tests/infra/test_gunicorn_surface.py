"""What function/infra/worker.py relies on in gunicorn's gthread worker, checked by name.

The worker is the one module that depends on how gthread is built rather than on gunicorn's documented
settings and hooks: no setting makes gthread read a request head without a thread, nor answer the
connections past ``worker_connections`` with a 503. Each name below is a method or attribute it
overrides or calls; a gunicorn release that renames or drops one fails here, with the name, before
the worker misbehaves at run time (requirements pin gunicorn for the same reason).
"""

from __future__ import annotations

import inspect

import pytest
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from function.infra.worker import HeadFirstWorker

WORKER = "function/infra/worker.py"
METHODS = {  # gthread method -> its parameters after self, as the worker calls or overrides it
    "enqueue_req": ["conn"], "accept": ["listener"], "set_accept_enabled": ["enabled"], "handle": ["conn"],
    "handle_request": ["req", "conn"], "murder_pending": [], "init_process": [],
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_gthread_methods_the_worker_uses_are_there_with_their_parameters(name):
    method = getattr(ThreadWorker, name, None)
    assert method is not None, f"gunicorn's ThreadWorker has no {name}() any more: function/infra/worker.py needs it"
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    assert params == METHODS[name], f"ThreadWorker.{name}{params}: function/infra/worker.py expects {METHODS[name]}"


def test_the_gthread_state_the_worker_reads_is_there():
    source = inspect.getsource(ThreadWorker)
    for attribute in ("self.nr_conns", "self.poller", "self.worker_connections", "self.alive"):
        assert attribute in source, f"gunicorn's ThreadWorker no longer keeps {attribute}: {WORKER} reads it"
    conn_source = inspect.getsource(TConn)
    for attribute in ("self.parser", "self.sock", "self.client", "def init(", "def close("):
        assert attribute in conn_source, f"gunicorn's TConn no longer has {attribute}: {WORKER} uses it"
    for method in ("take_buffered", "unread"):
        assert callable(getattr(Unreader, method, None)), f"gunicorn's Unreader has no {method}(): {WORKER} needs it"


def test_the_worker_overrides_nothing_private():
    own = {name for name in vars(HeadFirstWorker) if name.startswith("_") and not name.startswith("__")}
    inherited = {name for name in own if any(name in vars(base) for base in ThreadWorker.__mro__)}
    assert not inherited, f"function/infra/worker.py overrides gunicorn's private {sorted(inherited)}"
