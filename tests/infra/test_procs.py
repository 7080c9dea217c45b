"""Other processes of ours: their CPU time, idle-only scheduling and the priority a waiting run lends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from function.infra import procs

IDLE_CHILD = textwrap.dedent("""
    import os, sys, threading, time
    from function.infra import procs
    procs.run_when_idle()
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # a thread started afterwards
    print(threading.active_count(), flush=True)
    sys.stdin.readline()
""")


def test_a_process_on_idle_cpu_gets_the_normal_policy_back_on_every_thread_when_a_run_lends_it():
    child = subprocess.Popen([sys.executable, "-c", IDLE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        threads = int(child.stdout.readline())
        tasks = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tasks) == threads == 2
        assert {os.sched_getscheduler(t) for t in tasks} == {os.SCHED_IDLE}  # the new thread inherited it
        assert procs.lend_priority(child.pid) == 2
        assert {os.sched_getscheduler(t) for t in tasks} == {os.SCHED_OTHER}
        assert procs.lend_priority(child.pid) == 0  # nothing left to change
    finally:
        child.kill()
        child.wait()
    assert procs.lend_priority(child.pid) == 0  # gone: nothing to do, no error


def test_cpu_seconds_reads_a_process_and_says_none_once_it_is_gone():
    assert procs.cpu_seconds(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.cpu_seconds(child.pid) is None
