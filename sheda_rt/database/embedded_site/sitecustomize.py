"""Run by the embedded database's interpreter at its start, never imported by Sheda RT.

The embedded database (SecantusDB, its own process: sheda_rt/database/embedded.py) serves
each connection on a thread and guards each collection, and some of its own state, with a
lock. A thread that holds one of those locks and then waits for the interpreter lock (the
GIL) keeps every other request behind it waiting too; the interpreter makes a running thread
hand the GIL over only every `sys.getswitchinterval()` seconds, 5 ms by default. Measured at
1,000 chat messages/s (the database's own lock hold times, instrumented in a scratch copy):
holds of the messages lock over 3 ms fell from 63 to 36 in 30 s and the longest wait on its
global lock from 26 ms to 6 ms with a 1 ms interval. The embedded launcher puts this folder
first on the child's PYTHONPATH and the interval in SHEDA_EMBEDDED_SWITCH_INTERVAL_MS.

Any other `sitecustomize` further along the path (a distribution's, a virtualenv's) still runs.
"""
import os
import sys

_ms = os.environ.get("SHEDA_EMBEDDED_SWITCH_INTERVAL_MS", "")
try:
    if _ms and float(_ms) > 0:
        sys.setswitchinterval(float(_ms) / 1000.0)
except ValueError:
    pass


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_chain()
