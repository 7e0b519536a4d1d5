"""One function call in a worker process, so that a second core works while this one does.

``edgekit.export`` converts the TFLite graphs this way while it exports and quantizes the ONNX file:
both are CPU-bound Python (torch.export, decompositions, MLIR lowering) that threads would serialise.

The worker is a fresh Python interpreter reading the pickled call from a file: unlike
multiprocessing's spawn it never re-runs the caller's script, so a script without an
``if __name__ == "__main__"`` guard is safe. A call that references objects defined in ``__main__``
(a model class in the user's script) cannot be loaded there; :meth:`Background.start` then returns
``None`` and the caller runs it itself.

The worker's stdout and stderr go to a log file (converters print progress and import warnings);
its exception comes back and is raised in the caller; a worker that dies (killed, out of memory)
is reported with its exit code and the end of its log. ``close`` terminates a worker still running
and removes its files, so an export that fails on the other side leaves nothing behind.

>>> job = Background.start(sum, [1, 2, 3])   # doctest: +SKIP
>>> job.result()                              # doctest: +SKIP
6
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

__all__ = ["Background", "WorkerDied", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without sched_getaffinity
        return os.cpu_count() or 1


# the worker's program: edgekit from where this file is, whatever the caller's working directory
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
_WORKER = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
           "from edgekit._background import _main; sys.exit(_main(Path(sys.argv[2])))")


class WorkerDied(RuntimeError):
    """The worker process ended without returning a result."""


class _NotFromMain(pickle.Pickler):
    """A pickler that refuses classes and functions of ``__main__``: the worker could not import them."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            raise pickle.PicklingError(f"{obj!r} is defined in __main__")
        return NotImplemented


class Background:
    def __init__(self, proc: subprocess.Popen, folder: Path, what: str):
        self._proc, self._folder, self.what = proc, folder, what

    @classmethod
    def start(cls, fn: Callable[..., Any], *args: Any, what: str | None = None, **kwargs: Any) -> "Background | None":
        """``fn(*args, **kwargs)`` started in a worker process; ``None`` when the call cannot be
        pickled or names something of ``__main__``: the caller then runs it itself."""
        buf = io.BytesIO()
        try:
            _NotFromMain(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((fn, args, kwargs))
        except (pickle.PicklingError, TypeError, AttributeError):
            return None
        folder = Path(tempfile.mkdtemp(prefix="edgekit-worker-"))
        try:
            with open(folder / "call.pickle", "wb") as f:
                pickle.dump(list(sys.path), f)  # first: where the worker finds the modules the call names
                f.write(buf.getbuffer())
            with open(folder / "log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "-c", _WORKER, _PACKAGE_PARENT, str(folder)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(proc, folder, what or getattr(fn, "__name__", "the worker's call"))

    def result(self) -> Any:
        """Wait for the call; its return value, or its exception raised here."""
        try:
            code = self._proc.wait()
            try:
                with open(self._folder / "result.pickle", "rb") as f:
                    status, value = pickle.load(f)
            except (OSError, EOFError, pickle.UnpicklingError):
                tail = self._log_tail()
                raise WorkerDied(f"the worker process running {self.what} exited with code {code} before returning "
                                 f"a result (killed, or out of memory?); run the export again, or with "
                                 f"parallel=False (--sequential) to do it in this process"
                                 + (f"; its last output:\n{tail}" if tail else "")) from None
        finally:
            self.close()
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop the worker if it still runs; remove its files. Safe to call twice."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = (self._folder / "log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _main(folder: Path) -> int:
    """The worker: one call, its result or exception written to ``result.pickle`` (complete or not at all)."""
    with open(folder / "call.pickle", "rb") as f:
        sys.path[:] = pickle.load(f)
        try:
            fn, args, kwargs = pickle.load(f)
            message = ("ok", fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            message = ("error", e)
    try:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as e:  # an unpicklable exception or result
        data = pickle.dumps(("error", RuntimeError(f"{type(message[1]).__name__} from the worker could not be sent "
                                                   f"back: {e}; {message[1]}")))
    partial = folder / "result.pickle.partial"
    partial.write_bytes(data)
    partial.rename(folder / "result.pickle")
    return 0
