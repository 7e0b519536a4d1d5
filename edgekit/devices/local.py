"""``local``: this machine as a device. The agent file is copied to a temporary directory and run
there as ``python -I agent.py request.json`` in a subprocess, isolated from edgekit's imports
exactly as on a remote device.

``cores`` pins its measurements to those cores instead of the agent's default (the last ones this
process may use): two local devices measuring at once (``edgekit lut build --device local --device
local``) each get cores of their own, so their timed loops never share one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import AGENT_PATH, AgentDevice, DeviceError, Inputs, ModelFile, load_npz, parse_agent_output, write_inputs

__all__ = ["LocalDevice"]


class LocalDevice(AgentDevice):
    def __init__(self, *, python: str | None = None, timeout: float = 1800.0, cores: list[int] | None = None):
        self.python = python or sys.executable
        self.timeout = timeout
        self.cores = None if cores is None else [int(c) for c in cores]
        self.address = "local"

    def _invoke(self, model: ModelFile, request: dict[str, Any], inputs: Inputs
                ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        with tempfile.TemporaryDirectory(prefix="edgekit-run-") as tmp:
            work = Path(tmp)
            shutil.copyfile(AGENT_PATH, work / "agent.py")
            request = dict(request, model=str(model.path))
            if self.cores is not None and request.get("pin_cores") is not None:
                request["pin_cores"] = self.cores
            write_inputs(work, request, inputs)
            (work / "request.json").write_text(json.dumps(request))
            try:
                proc = subprocess.run([self.python, "-I", "agent.py", "request.json"], cwd=work, capture_output=True,
                                      text=True, timeout=self.timeout)
            except FileNotFoundError:
                raise DeviceError(self.address, "start", f"no Python at {self.python}; pass --device-python") from None
            except subprocess.TimeoutExpired:
                raise DeviceError(self.address, "run", f"the agent did not finish within {self.timeout:.0f} s") from None
            result = parse_agent_output(self.address, "run", proc.stdout, proc.stderr, proc.returncode)
            files = {"outputs": load_npz(work / "outputs.npz")}
            if inputs is None:
                files["inputs"] = load_npz(work / "outputs.inputs.npz")
            return result, files
