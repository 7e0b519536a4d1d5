"""The converter tools (litert-torch, ai-edge-quantizer, ai-edge-litert): their versions, running them
offline and silent, and their failures turned into a :class:`ConversionError` that names the op and,
where the graph tells, the PyTorch module."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import tempfile
from typing import Iterator

import torch

__all__ = ["ConversionError", "tool_versions", "captured_output", "quiet_tools", "describe_failure"]

_TOOLS = ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert")
# litert-torch pulls in huggingface_hub (its generative exporters load hub models); an export must
# never reach for a hub, so the hub is set offline (kagglehub, also pulled in, has no such switch and
# is only called by those generative exporters). Progress and TF C++ logging off: less to capture.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "3"}


class ConversionError(ValueError):
    """A converter or quantizer failure; ``log`` holds what the tools printed meanwhile."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Send fds 1 and 2 (Python, rich, absl and C++ alike) to a temporary file for the duration;
    the text is put in the yielded list when the block ends, so the caller can show it on failure."""
    import sys
    box: list[str] = []
    for s in (sys.stdout, sys.stderr):
        s.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield box
        finally:
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    s.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            box.append(log.read().decode("utf-8", "replace"))


class _Failure:
    """What a failing tool step knows about where it was: the FX graph being converted, if any."""

    graph: torch.fx.GraphModule | None = None


@contextlib.contextmanager
def quiet_tools(what: str) -> Iterator[_Failure]:
    """Offline, silent tools; any exception becomes a ConversionError naming the op and, where the
    graph tells, the PyTorch module, with the captured tool output attached as ``.log``."""
    for k, v in _OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import warnings
    box: list[str] = []
    where = _Failure()
    try:
        with captured_output() as box, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield where
    except ConversionError:
        raise
    except Exception as e:  # the tools raise anything from RuntimeError to absl errors
        log = box[0] if box else ""
        raise ConversionError(describe_failure(what, e, log, where.graph), log) from e


_MLIR_ERROR_RE = re.compile(r"error: (.+)")
_LOC_RE = re.compile(r'loc\((?:fused\[)?"([^"]+)"')
_OP_RE = re.compile(r"(aten\.[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?|'?tfl\.[a-z_0-9]+'?|'?stablehlo\.[a-z_0-9]+'?)")


def _module_of(graph: torch.fx.GraphModule | None, op: str) -> str | None:
    """'path.to.module (Class)' of the first node of ``graph`` calling aten ``op`` (or the op it
    decomposes from: special_i0 for i0), from the export's nn_module_stack."""
    if graph is None or not op.startswith("aten."):
        return None
    base = op.split(".")[1]
    for node in graph.graph.nodes:
        name = str(node.target).split(".")[1] if node.op == "call_function" and "." in str(node.target) else ""
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        if not stack or not (name == base or name.endswith("_" + base) or base.endswith("_" + name)):
            continue
        return _node_module(node)
    return None


_SRC_RE = re.compile(r"([\w./-]+\.py:\d+):\d+: error")


def _failing_node(e: BaseException) -> torch.fx.Node | None:
    """The FX node a lowering was working on when it raised: the innermost frame of the traceback
    holding a ``call_function`` node in a local named ``node`` or ``n`` (the converters lower a
    graph with an FX interpreter, one node at a time)."""
    found = None
    tb = e.__traceback__
    while tb is not None:
        for key in ("node", "n"):
            v = tb.tb_frame.f_locals.get(key)
            if isinstance(v, torch.fx.Node) and v.op == "call_function":
                found = v
        tb = tb.tb_next
    return found


def _node_module(node: torch.fx.Node) -> str | None:
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return None
    path, cls = (str(v) for v in stack[-1])
    if str(stack[0][1]).endswith("_ChannelsLast"):  # our NHWC wrapper holds the user's model as .model
        path = re.sub(r"^model(\.|$)", "", path)
    return f"{path or '<top>'} ({cls.rsplit('.', 1)[-1]})"


def describe_failure(what: str, e: Exception, log: str, graph: torch.fx.GraphModule | None) -> str:
    """'<what> failed at op X, module Y: <the error>' from the exception, the tool output and the
    graph: an aten op maps to its PyTorch module through the export's nn_module_stack; an MLIR error
    gives its op, and its location (a module path, or the PyTorch source line of the layer)."""
    text = f"{e}\n{log}"
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    mlir = [m.group(1).strip() for m in _MLIR_ERROR_RE.finditer(text)]
    detail = mlir[0] if mlir else first
    parts = []
    op = _OP_RE.search(detail) or _OP_RE.search(first)
    if op:
        parts.append(f"op {op.group(1).strip(chr(39))}")
        module = _module_of(graph, op.group(1))
        loc = _LOC_RE.search(text)
        src = _SRC_RE.search(text)
        if module or loc:
            parts.append(f"module {module or loc.group(1)}")
        elif src:
            parts.append(f"layer source {src.group(1).split('site-packages/')[-1]}")
    else:  # the error names no op: the node the converter was lowering when it raised
        node = _failing_node(e)
        if node is not None:
            parts.append(f"op {node.target}")
            module = _node_module(node)
            if module:
                parts.append(f"module {module}")
    at = f" at {', '.join(parts)}" if parts else ""
    more = f" (+{len(mlir) - 1} more converter errors in .log)" if len(mlir) > 1 else ""
    return f"{what} failed{at}: {detail[:300]}{more}"


def tool_versions() -> dict[str, str]:
    out = {}
    for dist in _TOOLS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
