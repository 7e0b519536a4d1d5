"""Other people's model files on the local device: dynamic dimensions set with --input-shape or
refused, every numeric input dtype, inputs from an .npz, flags that do not apply refused, several
files in one run with one failing, and the results store filtered by glob and by input shape.
The files are hand-built ONNX graphs (``onnx.helper``), a few hundred bytes each."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.devices.measure import measure
from edgekit.devices.stats import Protocol
from edgekit.devices.store import ResultStore

QUICK = ("--runs", "5", "--warmup", "1", "--max-runs", "5")
PROTOCOL = Protocol(runs=5, warmup=1, max_runs=5, pin=False)


def save(path, inputs, outputs, nodes, initializers=()):
    """An opset-17 ONNX file of ``nodes``; ``inputs`` / ``outputs`` are (name, elem type, dims)."""
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def pooled(path, dims=("batch", 3, "height", "width")):
    """x (dims) -> y = mean of x over H, W (N, C, 1, 1)."""
    return save(path, [("x", TensorProto.FLOAT, list(dims))], [("y", TensorProto.FLOAT, [dims[0], dims[1], 1, 1])],
                [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)])


def lstm(path, hidden=5, features=4):
    """An LSTM over X (seq, batch, features) with a dynamic sequence length: Y (seq, 1, batch, hidden)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, features)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R")
    return save(path, [("X", TensorProto.FLOAT, ["seq", 1, features])], [("Y", TensorProto.FLOAT, ["seq", 1, 1, hidden])],
                [helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=hidden)], [w, r])


def dynamic_relu_tflite(path):
    """A one-op TFLite file (RELU) whose input x is 1x3xHxW with H and W dynamic (-1 in its shape
    signature), written with LiteRT's flatbuffer schema."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def tensor(name):
        t = schema.TensorT()
        t.name, t.type, t.buffer = name, schema.TensorType.FLOAT32, 0
        t.shape, t.shapeSignature = np.array([1, 3, 1, 1], np.int32), np.array([1, 3, -1, -1], np.int32)
        return t

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0], np.int32), np.array([1], np.int32)
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = [tensor("x"), tensor("y")], [op]
    graph.inputs, graph.outputs = np.array([0], np.int32), np.array([1], np.int32)
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def embedding(path, vocab=10, dim=4):
    """ids (1, 6) int64 -> rows of a (vocab, dim) table: random ids outside 0..vocab-1 fail in Gather."""
    table = numpy_helper.from_array(np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim), "table")
    return save(path, [("ids", TensorProto.INT64, [1, 6])], [("rows", TensorProto.FLOAT, [1, 6, dim])],
                [helper.make_node("Gather", ["table", "ids"], ["rows"])], [table])


def external_matmul(path, weights):
    """x (rows, 8) @ W (8, 3) with W in ``<path>.data`` beside the file (``save_as_external_data``):
    the file's sha256 stays the same whatever ``weights`` hold."""
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # onnx.save appends to a data file that exists
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "external",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 3])],
                              initializer=[numpy_helper.from_array(weights.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


def check_external_data_runs_on(device, tmp_path, options):
    """``external_matmul`` on ``device`` at 5 rows, then again with new weights in the data file: the
    device cache must serve the new weights, not the old ones under the unchanged model sha256."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    path = external_matmul(tmp_path / "net.onnx", w1)
    shapes = [(None, (5, 8))]
    first = measure(path, device=device, protocol=PROTOCOL, input_shapes=shapes, **options)
    (x,) = first.result.inputs.values()  # (samples, 5, 8)
    np.testing.assert_allclose(first.result.outputs["output_0"], x @ w1.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert first.result.to_dict()["output_shapes"] == {"y": [5, 3]}
    assert first.result.conditions["transfer"]["model_uploaded"] is True
    sha = first.result.artifact_sha256
    external_matmul(path, w2)
    second = measure(path, device=device, protocol=PROTOCOL, input_shapes=shapes, **options)
    assert second.result.artifact_sha256 == sha and second.result.conditions["transfer"]["model_uploaded"] is True
    np.testing.assert_allclose(second.result.outputs["output_0"], x @ w2.astype(np.float32), rtol=1e-5, atol=1e-5)
    third = measure(path, device=device, protocol=PROTOCOL, input_shapes=shapes, **options)
    assert third.result.conditions["transfer"]["model_uploaded"] is False
    return second


@pytest.fixture
def edgekit(edgekit_cli, home):
    return edgekit_cli


def doc_of(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---- 1. dynamic dimensions ---------------------------------------------------------------------

def test_dynamic_dims_are_refused_naming_the_input_its_dims_and_the_flag(edgekit, tmp_path):
    path = pooled(tmp_path / "dyn.onnx")
    r = edgekit("run", path, *QUICK)
    assert r.returncode != 0 and r.stdout == ""
    err = " ".join(r.stderr.split())
    assert "input 'x'" in err and "batch" in err and "height" in err and "width" in err, err
    assert "--input-shape x=" in err, err
    assert ResultStore().count() == 0


def test_input_shape_sets_dynamic_dims_and_the_shapes_are_reported(edgekit, tmp_path):
    path = pooled(tmp_path / "dyn.onnx")
    doc = doc_of(edgekit("run", path, "--input-shape", "2x3x16x8", *QUICK, "--json"))
    assert doc["input_tensors"] == [{"name": "x", "shape": [2, 3, 16, 8], "dtype": "float32"}]
    assert doc["output_shapes"] == {"y": [2, 3, 1, 1]}
    doc = doc_of(edgekit("run", path, "--input-shape", "x=1x3x32x32", *QUICK, "--json"))
    assert doc["input_tensors"][0]["shape"] == [1, 3, 32, 32] and doc["output_shapes"] == {"y": [1, 3, 1, 1]}
    r = edgekit("run", path, "--input-shape", "x=1x3x32x32", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "input x: 1x3x32x32 float32" in r.stdout and "output y: 1x3x1x1 float32" in r.stdout, r.stdout


def test_input_shape_mistakes_are_refused_clearly(edgekit, tmp_path):
    path = pooled(tmp_path / "dyn.onnx")
    cases = {("1x3x8",): "rank", ("1x4x8x8",): "axis 1", ("z=1x3x8x8",): "no input 'z'",
             ("1x3x0x8",): "positive", ("x=1x3x8x8", "x=1x3x4x4"): "twice"}
    for shapes, words in cases.items():
        r = edgekit("run", path, *[a for s in shapes for a in ("--input-shape", s)], *QUICK)
        assert r.returncode != 0 and words in r.stderr.strip().splitlines()[-1], (shapes, r.stderr)


def test_a_dynamic_batch_alone_is_set_to_1_and_said(edgekit, tmp_path):
    path = pooled(tmp_path / "batch.onnx", dims=("N", 3, 8, 8))
    doc = doc_of(edgekit("run", path, *QUICK, "--json"))
    assert doc["input_tensors"][0]["shape"] == [1, 3, 8, 8]
    assert any("dynamic batch" in n and "set to 1" in n for n in doc["notes"]), doc["notes"]


def test_lstm_with_a_dynamic_sequence_length_runs_at_the_length_given(edgekit, tmp_path):
    path = lstm(tmp_path / "lstm.onnx")
    r = edgekit("run", path, *QUICK)
    assert r.returncode != 0 and "seq" in r.stderr and "--input-shape X=" in r.stderr, r.stderr
    doc = doc_of(edgekit("run", path, "--input-shape", "7x1x4", *QUICK, "--json"))
    assert doc["output_shapes"] == {"Y": [7, 1, 1, 5]}


def test_tflite_dynamic_dims_are_refused_or_resized(edgekit, tmp_path):
    path = dynamic_relu_tflite(tmp_path / "relu.tflite")
    r = edgekit("run", path, *QUICK)
    assert r.returncode != 0 and "axis 2" in r.stderr and "--input-shape x=1x3x<dim2>x<dim3>" in r.stderr, r.stderr
    doc = doc_of(edgekit("run", path, "--input-shape", "1x3x5x7", *QUICK, "--json"))
    assert doc["input_tensors"][0]["shape"] == [1, 3, 5, 7] and doc["output_shapes"] == {"y": [1, 3, 5, 7]}


# ---- 2. dtypes and inputs ----------------------------------------------------------------------

DTYPES = {"float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE, "int8": TensorProto.INT8,
          "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
          "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL}


def test_every_numeric_input_dtype_gets_inputs_and_strings_are_refused(edgekit, tmp_path):
    path = save(tmp_path / "dtypes.onnx", [(f"in_{k}", t, [2, 3]) for k, t in DTYPES.items()],
                [(f"out_{k}", t, [2, 3]) for k, t in DTYPES.items()],
                [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in DTYPES])
    doc = doc_of(edgekit("run", path, *QUICK, "--json"))
    assert {t["name"]: t["dtype"] for t in doc["input_tensors"]} == {f"in_{k}": k for k in DTYPES}
    assert doc["output_shapes"] == {f"out_{k}": [2, 3] for k in DTYPES}
    words = save(tmp_path / "words.onnx", [("text", TensorProto.STRING, [1])], [("same", TensorProto.STRING, [1])],
                 [helper.make_node("Identity", ["text"], ["same"])])
    r = edgekit("run", words, *QUICK)
    assert r.returncode != 0 and "input 'text'" in r.stderr and "string" in r.stderr, r.stderr


def test_inputs_npz_feeds_index_inputs(home, edgekit, tmp_path):
    path = embedding(tmp_path / "embed.onnx")
    ids = np.array([[0, 9, 3, 3, 7, 1]], dtype=np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    m = measure(path, protocol=PROTOCOL, inputs=tmp_path / "ids.npz")
    (rows,) = m.result.outputs.values()
    np.testing.assert_array_equal(rows[0], np.arange(40, dtype=np.float32).reshape(10, 4)[ids])
    assert "ids.npz" in m.inputs_source
    doc = doc_of(edgekit("run", path, "--inputs", tmp_path / "ids.npz", *QUICK, "--json"))
    assert doc["input_tensors"] == [{"name": "ids", "shape": [1, 6], "dtype": "int64"}]


def test_inputs_npz_that_does_not_fit_the_model_is_refused(edgekit, tmp_path):
    path = embedding(tmp_path / "embed.onnx")
    ids = np.zeros((1, 6), dtype=np.int64)
    cases = {"missing": ({}, "no array for input(s) 'ids'"),
             "extra": ({"ids": ids, "mask": ids}, "'mask'"),
             "dtype": ({"ids": ids.astype(np.int32)}, "int64"),
             "shape": ({"ids": np.zeros((1, 7), dtype=np.int64)}, "(1x6)")}
    for case, (arrays, words) in cases.items():
        np.savez(tmp_path / f"{case}.npz", **arrays)
        r = edgekit("run", path, "--inputs", tmp_path / f"{case}.npz", *QUICK)
        assert r.returncode != 0 and words in r.stderr, (case, r.stderr)
    r = edgekit("run", path, "--inputs", tmp_path / "nothing.npz", *QUICK)
    assert r.returncode != 0 and "nothing.npz" in r.stderr


def test_flags_that_do_not_apply_to_a_file_are_refused(edgekit, tmp_path):
    path = pooled(tmp_path / "static.onnx", dims=(1, 3, 8, 8))
    for flags, words in ((("--data", "fashion-mnist"), "--data"), (("--samples", "4"), "--samples"),
                         (("--weights", str(tmp_path / "w.pt")), "--weights"),
                         (("--per-layer",), "--per-layer")):
        r = edgekit("run", path, *flags, *QUICK)
        assert r.returncode != 0 and words in r.stderr and "manifest" in r.stderr, (flags, r.stderr)
    assert ResultStore().count() == 0


# ---- 4. several files in one run ---------------------------------------------------------------

def test_several_files_one_failing_shows_the_others_and_exits_nonzero(edgekit, tmp_path):
    a = pooled(tmp_path / "a.onnx", dims=(1, 3, 8, 8))
    b = pooled(tmp_path / "b.onnx")  # dynamic: refused without --input-shape
    c = pooled(tmp_path / "c.onnx", dims=(1, 3, 4, 4))
    r = edgekit("run", a, b, c, *QUICK)
    assert r.returncode != 0
    assert "a (onnx unknown) on local" in r.stdout and "c (onnx unknown) on local" in r.stdout, r.stdout
    assert "b.onnx" in r.stderr and "--input-shape" in r.stderr, r.stderr
    assert [row["model"] for row in ResultStore().query()] == ["a", "c"]
    r = edgekit("run", a, b, c, *QUICK, "--json")
    assert r.returncode != 0
    runs = json.loads(r.stdout)["runs"]
    assert [x.get("model") for x in runs] == ["a", None, "c"]
    assert runs[1]["file"] == str(b) and "--input-shape" in runs[1]["error"]


# ---- 8. the results store ----------------------------------------------------------------------

def test_results_filter_by_glob_and_input_shape(edgekit, tmp_path):
    dyn = pooled(tmp_path / "dyn.onnx")
    other = pooled(tmp_path / "other.onnx", dims=(1, 3, 8, 8))
    for shape in ("1x3x32x32", "1x3x224x224"):
        assert edgekit("run", dyn, "--input-shape", shape, *QUICK).returncode == 0
    assert edgekit("run", other, *QUICK).returncode == 0

    def rows(*flags):
        return [(x["model"], x["input_shape"]) for x in doc_of(edgekit("results", *flags, "--json"))["results"]]

    assert rows("--model", "d*") == [("dyn", "1x3x32x32"), ("dyn", "1x3x224x224")]
    assert rows("--input-shape", "*x224x224") == [("dyn", "1x3x224x224")]
    assert rows("--format", "onn?", "--precision", "unk*", "--device", "loc*", "--input-shape", "1x3x8x8") == [
        ("other", "1x3x8x8")]
    assert rows("--model", "dyn") == rows("--model", "d*") and rows("--model", "x*") == []
    r = edgekit("results", "--model", "dyn")
    assert r.returncode == 0 and "input" in r.stdout and "1x3x32x32" in r.stdout and "1x3x224x224" in r.stdout


# ---- 3. external data --------------------------------------------------------------------------

def test_onnx_with_external_data_runs_locally_and_a_missing_data_file_is_named(home, tmp_path, edgekit):
    w = np.arange(24, dtype=np.float32).reshape(8, 3)
    path = external_matmul(tmp_path / "net.onnx", w)
    m = measure(path, protocol=PROTOCOL, input_shapes=[("x", (2, 8))], store=False)
    (x,) = m.result.inputs.values()
    np.testing.assert_allclose(m.result.outputs["output_0"], x @ w, rtol=1e-5)
    (tmp_path / "net.onnx.data").unlink()
    r = edgekit("run", path, "--input-shape", "2x8", *QUICK)
    assert r.returncode == 2 and "net.onnx.data, which is not beside it" in r.stderr, r.stderr


def test_a_store_written_before_input_shapes_gains_the_column(tmp_path):
    import sqlite3

    from edgekit.devices import store

    old = store._SCHEMA.replace(",\n    input_shape TEXT", "")
    assert "input_shape" not in old
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.executescript(old)
    assert ResultStore(tmp_path / "old.db").query(input_shape="*") == []
    with sqlite3.connect(tmp_path / "old.db") as db:
        assert "input_shape" in {r[1] for r in db.execute("PRAGMA table_info(results)")}
