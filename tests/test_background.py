"""edgekit._background: one call in a spawned worker process (what lets an export convert its
TFLite files on the second core), its result, its exception, its death and its clean-up."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit._background import Background, WorkerDied


def test_result_comes_back():
    job = Background.start(sum, [1, 2, 3])
    assert job.result() == 6
    assert job._proc.poll() == 0 and not job._folder.exists()


def test_exception_is_raised_in_the_caller_with_its_type():
    job = Background.start(int, "not a number")
    with pytest.raises(ValueError, match="not a number"):
        job.result()


def test_a_worker_that_dies_is_reported_with_its_exit_code():
    job = Background.start(os.abort, what="the abort")
    with pytest.raises(WorkerDied, match=r"running the abort exited with code -6 .*parallel=False"):
        job.result()
    assert not job._folder.exists()


def test_close_stops_a_running_worker():
    job = Background.start(time.sleep, 120)
    t0 = time.monotonic()
    job.close()
    assert job._proc.poll() is not None and time.monotonic() - t0 < 30
    assert not job._folder.exists()
    job.close()  # twice is harmless


def test_a_call_that_cannot_be_pickled_is_not_started():
    assert Background.start(lambda: 1) is None


class Local:
    pass


def test_a_call_naming_main_is_run_by_the_caller(monkeypatch):
    """The worker cannot import what the caller's script defines; such a call is not started."""
    monkeypatch.setattr(Local, "__module__", "__main__")
    assert Background.start(id, Local()) is None


def test_a_script_without_a_main_guard_is_not_run_again(tmp_path):
    """The worker runs the call only: the caller's script is not executed a second time."""
    script = tmp_path / "script.py"
    marker = tmp_path / "runs"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from edgekit._background import Background
with open({str(marker)!r}, "a") as f:
    f.write("run\\n")
print(Background.start(sum, [2, 3]).result())
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "5", r.stderr
    assert marker.read_text() == "run\n"
