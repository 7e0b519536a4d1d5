"""Reading a .tflite flatbuffer without running it: its operators in order with their tensors, and
how many of each op it has."""
from __future__ import annotations

import collections
from typing import Any

__all__ = ["QUANT_OPS", "INT8_KERNEL_OPS", "op_list", "op_histogram"]

QUANT_OPS = ("QUANTIZE", "DEQUANTIZE")
INT8_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _op_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_list(model_bytes: bytes) -> list[dict[str, Any]]:
    """Every operator of the main subgraph in order: ``{"op", "inputs", "outputs"}``, each tensor as
    ``{"name", "shape", "dtype", "const"}`` (dtype a numpy name)."""
    schema = _schema()
    names = _op_names()
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    graph = model.Subgraphs(0)

    def tensor(i: int) -> dict[str, Any]:
        t = graph.Tensors(i)
        buf = model.Buffers(t.Buffer())
        const = buf is not None and (buf.DataLength() > 0 or buf.Size() > 0)  # data inline or offset
        shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return {"name": t.Name().decode(), "shape": shape, "dtype": types.get(t.Type(), "?"), "const": const}

    ops = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ins = [tensor(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
        outs = [tensor(op.Outputs(j)) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0]
        ops.append({"op": name, "inputs": ins, "outputs": outs})
    return ops


def op_histogram(model_bytes: bytes) -> dict[str, int]:
    """``{"CONV_2D": 53, ...}`` for every subgraph, in first-seen order."""
    schema = _schema()
    names = _op_names()
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    hist: collections.Counter[str] = collections.Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for k in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(k).OpcodeIndex())
            hist[names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")] += 1
    return dict(hist)
