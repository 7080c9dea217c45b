"""What the tests and the benchmark share to run the function and measure it: free ports, the
function started as the image starts it (``harness.launch``), and process trees with their memory
and CPU read from /proc (``harness.procfs``).

A leaf package: it imports only the standard library, never ``function``, ``standin``, ``bench`` or
``tests``, which all import it. So those packages share these helpers without importing each other
(the tests do not depend on the benchmark, nor the benchmark on the tests), and no cycle can form.
It sits at the top of the repository, beside them, because it belongs to none of them; the image
leaves it out (.dockerignore), like everything that is not the function.
"""

from .launch import APP, HOST, ROOT, FunctionProcess, free_port, http_get, image_env, tail, wait_port
from .procfs import CpuMeter, Sampler, children, cpu_seconds, machine_busy_seconds, memory_mb, status_kb, tree

__all__ = ["APP", "HOST", "ROOT", "CpuMeter", "FunctionProcess", "Sampler", "children", "cpu_seconds", "free_port",
           "http_get", "image_env", "machine_busy_seconds", "memory_mb", "status_kb", "tail", "tree", "wait_port"]
