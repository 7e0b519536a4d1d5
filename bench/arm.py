"""ARM against x86: does an emulated Raspberry Pi compute what this machine computes?

One trained variant per family at edge size (the family's smallest variant at the smallest side it
takes from 32 px up, 1 channel, 10 classes, trained briefly on Fashion-MNIST and cached in
bench/out/weights), exported once as ONNX and TFLite, fp32 and int8 (cached in bench/out/arm). Each
file runs on the emulated boards ``qemu://pi4`` (Cortex-A72) and ``qemu://pi5`` (Cortex-A76, with
the dot-product instructions) and on this machine, on the same Fashion-MNIST test images
(``edgekit.devices.crosscheck.compare_devices``). Per file and board: how many output values differ
between ARM and x86 (int8 files in int8 steps, fp32 files beyond 1e-4 of the largest magnitude, and
whether they are bit-identical at all), the largest difference, the top-1 agreement; each side's
top-1 agreement and SQNR against the PyTorch model; how much of a TFLite graph XNNPACK took on each
side. Where ARM and x86 differ, the case is run again with every op's output and the first tensor
in graph order where the two part is named.

The boards are emulated (qemu-user): their run times are the emulator's, not a latency of a Pi, so
none is reported. Writes bench/results/arm.json (everything + machine fingerprint) and arm.md.

    .venv/bin/python bench/arm.py --quick                        # GhostNet v1 and FBNet v1
    .venv/bin/python bench/arm.py                                # all nine families
    .venv/bin/python bench/arm.py --families "ESPNet v2,FBNet v3" --boards pi5 --samples 32 --out /tmp/arm

The boards are built on first use (about 40 s each) under $EDGEKIT_BOARDS_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import (OUT, QUICK_FAMILIES, RESULTS, ROOT, TrainSettings, captured, first_line,  # noqa: E402
                           fingerprint, side_for, trained_model, write_json)

# family -> its smallest variant (fewest parameters at the side it takes from 32 px up)
EDGE_VARIANTS: dict[str, str] = {
    "ESPNet v1": "espnet_v1_c",
    "ESPNet v2": "espnetv2_0_5",
    "FBNet v1": "fbnet_a",
    "FBNet v2": "fbnetv2_f1",
    "FBNet v3": "fbnetv3_a",  # takes 49 px at the least
    "EfficientNet v1": "efficientnet_b0",
    "EfficientNet v2": "efficientnetv2_s",
    "GhostNet v1": "ghostnet_0_5",
    "GhostNet v2": "ghostnetv2_1_0",
}
BOARDS = ("pi4", "pi5")
FILES = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"))
FORMAT_NAMES = {"onnx": "ONNX", "tflite": "TFLite"}
ARM_OUT = OUT / "arm"
TRAIN = TrainSettings(resolution=32, limit=4000, epochs=1, batch_size=64, seed=0)
CALIB_SAMPLES, HOLDOUT = 256, 128


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- files ----------------------------------------------------------------------------------------

def _cached(folder: Path, variant: str, weights_sha: str) -> dict[tuple[str, str], Path]:
    """{(format, precision): path} of the files in ``folder`` exported from these weights."""
    from edgekit.exporters.artifact import load_artifact
    found = {}
    for fmt, prec in FILES:
        path = folder / f"{variant}-{fmt}-{prec}.{fmt}"
        if not path.is_file():
            continue
        try:
            m = load_artifact(path).manifest
        except (ValueError, OSError):
            continue
        if m.weights_sha256 == weights_sha:
            found[(fmt, prec)] = path
    return found


def export_files(variant: str, model, weights: Path) -> tuple[dict[tuple[str, str], Path], dict[str, str], float]:
    """The four files (cached), the errors of any format that would not export, and the export
    seconds (0 when all came from the cache). Both formats are exported together; if that fails,
    each format alone, so one converter's refusal does not hide the other format."""
    from edgekit.export import ExportSettings, export
    from edgekit.exporters.artifact import sha256_file
    folder = ARM_OUT / variant
    folder.mkdir(parents=True, exist_ok=True)
    sha = sha256_file(weights)
    files = _cached(folder, variant, sha)
    if len(files) == len(FILES):
        return files, {}, 0.0
    errors: dict[str, str] = {}
    t0 = time.perf_counter()

    def run(formats: tuple[str, ...]) -> None:
        settings = ExportSettings(formats=formats, precisions=("fp32", "int8"), calib_samples=CALIB_SAMPLES,
                                  holdout=HOLDOUT, force=True)
        with captured():
            done = export(model, name=variant, out=folder, weights_file=weights, weights_sha256=sha,
                          settings=settings)
        for f in done:
            m = f.artifact.manifest
            files[(m.format, m.precision)] = f.artifact.path

    try:
        run(("onnx", "tflite"))
    except Exception as e:  # noqa: BLE001 - recorded per format below
        log(f"    export of both formats failed ({first_line(e)}); trying each format alone")
        for fmt in ("onnx", "tflite"):
            try:
                run((fmt,))
            except Exception as e2:  # noqa: BLE001 - recorded in the rows of this format
                errors[fmt] = first_line(e2)
                log(f"    {fmt} export failed: {errors[fmt]}")
    return files, errors, round(time.perf_counter() - t0, 1)


# ---- comparing --------------------------------------------------------------------------------------

def _fallback_name(name: str) -> str:
    """A TFLite tensor name (``<module>.<Class>_<attr>/...;...``) as a dotted attribute path; any other
    name cut to its last 60 characters."""
    loc = name.split(";")[0]
    segs = [seg.rsplit(".", 1)[-1] for seg in loc.split("/")]
    attrs = [seg.split("_", 1)[1] for seg in segs if "_" in seg]
    short = ".".join(attrs[2:] or attrs) if len(segs) > 1 else loc
    return short if len(short) <= 60 else "..." + short[-57:]


def tensor_namer(path: Path, fmt: str, model) -> Any:
    """tensor name -> a readable one: ONNX, the node that computed it (``stages.1.0/Add``; a
    QuantizeLinear's output is named by the node it quantizes); TFLite, the module path of the
    PyTorch module the op ends with (``stages.1.0.ghost1.primary_conv.2``)."""
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(path), load_external_data=False).graph
        producer = {o: n for n in graph.node for o in n.output}

        def onnx_name(name: str) -> str:
            node = producer.get(name)
            while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear") \
                    and node.input and node.input[0] in producer:
                node = producer[node.input[0]]
            return node.name if node is not None and node.name else _fallback_name(name)
        return onnx_name
    from edgekit.exporters.tflite.tensor_names import module_paths

    def tflite_name(name: str) -> str:
        try:
            paths = [p for p in module_paths(name, model) if p]
        except Exception:  # noqa: BLE001 - a name the walker does not know: the fallback
            paths = []
        return paths[0] if paths else _fallback_name(name)
    return tflite_name


def onnx_output_step(path: Path) -> float | None:
    """The int8 step of an ONNX file's first output when a DequantizeLinear computes it (a QDQ int8
    file's logits are the dequantized integers: two runs differ by whole steps)."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
        return None
    init = {i.name: i for i in graph.initializer}
    consts = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    if node.input[1] in init:
        scale = numpy_helper.to_array(init[node.input[1]])
    elif node.input[1] in consts:
        scale = numpy_helper.to_array(consts[node.input[1]].attribute[0].t)
    else:
        return None
    return float(scale) if scale.size == 1 else None


def _labels(samples: int, batch: int) -> np.ndarray:
    from edgekit.calibration.data import load_dataset
    return load_dataset("fashion-mnist", split="test", limit=samples * batch).labels.astype(np.int64)


def _side(res, ref: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """One device's logits against PyTorch's and against the labels."""
    from edgekit.parity import compare
    y = np.asarray(res.outputs["output_0"], dtype=np.float64).reshape(ref.shape)
    rep = compare(ref, y)
    xnn = res.conditions.get("xnnpack")
    return {"top1_vs_pytorch": rep.top1_agreement, "max_abs_vs_pytorch": rep.max_abs, "sqnr_db_vs_pytorch": rep.sqnr_db,
            "top1_vs_labels": float(np.mean(y.argmax(1) == labels)),
            "xnnpack": None if xnn is None else {k: xnn.get(k) for k in ("ops", "delegated_ops", "partitions", "left")},
            "runtime": res.fingerprint.get("runtime"), "runtime_version": res.fingerprint.get("runtime_version"),
            "cpu_model": res.fingerprint.get("cpu_model"), "isa_features": res.fingerprint.get("isa_features"),
            "emulated": res.fingerprint.get("emulated"), "notes": list(res.notes)}


FIRST_DIFFERING = 12  # differing tensors kept per case in the JSON


def _first_parting(c, namer) -> dict[str, Any]:
    layers = c.layers or ()
    first = c.first_parting
    differing = [lay for lay in layers if lay.parts]
    return {"kernels": c.kernels, "tensors": len(layers), "tensors_differing": len(differing),
            "outputs_differ_in_this_run": not c.agree,
            "first_parting": None if first is None else {**first.to_dict(), "short_name": namer(first.name)},
            # the first few in graph order: where the difference starts and how it spreads
            "first_differing": [{"short_name": namer(lay.name), "op": lay.op, "unit": lay.unit,
                                 "share": lay.share, "max_diff": lay.max_diff} for lay in differing[:FIRST_DIFFERING]]}


def compare_file(path: Path, board: str, ref: np.ndarray, labels: np.ndarray, samples: int, protocol,
                 model) -> tuple[dict[str, Any], np.ndarray]:
    from edgekit.devices.crosscheck import agreement, compare_devices
    with captured():
        c = compare_devices(path, f"qemu://{board}", against="local", protocol=protocol, data="fashion-mnist",
                            samples=samples, per_layer=False, store=False)
    out = c.outputs[0]
    a, b = (np.asarray(r.outputs["output_0"]) for r in (c.a, c.b))
    row: dict[str, Any] = {
        "inputs": c.inputs_source, "agree": c.agree,
        "arm_vs_x86": {**out.to_dict(), "bit_identical": bool(np.array_equal(a, b)),
                       "values_not_bit_identical": int(np.count_nonzero(a != b)),
                       "all_outputs": [o.to_dict() for o in c.outputs]},
        "arm_vs_x86_steps": None, "arm": _side(c.a, ref, labels), "x86": _side(c.b, ref, labels),
        "per_layer": None}
    if out.unit == "int8 steps":
        row["arm_vs_x86_steps"] = out.to_dict()
    elif c.a.precision == "int8" and c.a.format == "onnx":
        step = onnx_output_step(path)
        if step is not None:  # the float logits of a QDQ file are whole steps of its last DequantizeLinear
            row["arm_vs_x86_steps"] = {**agreement(out.name, a, b, scale=step, logits=True).to_dict(), "step": step}
    if not c.agree:
        log(f"      ARM and x86 differ ({out.format()}); running again with every op's output ...")
        try:
            with captured():
                cl = compare_devices(path, f"qemu://{board}", against="local", protocol=protocol,
                                     data="fashion-mnist", samples=samples, per_layer=True, store=False)
            row["per_layer"] = _first_parting(cl, tensor_namer(path, c.a.format, model))
        except Exception as e:  # noqa: BLE001 - recorded beside the outputs' comparison
            row["per_layer"] = {"error": first_line(e)}
    return row, a


# ---- the Markdown -----------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _xnn(side: dict | None, fmt: str) -> str:
    if fmt != "tflite" or side is None:
        return "n/a"
    x = side.get("xnnpack")
    if not x:
        return "?"
    return f"{x['delegated_ops']}/{x['ops']}"


def _share(v: float) -> str:
    return "0 %" if v == 0 else f"{100 * v:.2g} %"


def _steps(r: dict) -> dict | None:
    """ARM against x86 in int8 steps of the output (int8 files), else None."""
    return r.get("arm_vs_x86_steps")


def _diff_cells(r: dict) -> list[str]:
    d, st = r["arm_vs_x86"], _steps(r)
    if st is not None:
        values = f"{st['differing']} of {st['values']} ({_share(st['share'])})"
        largest = f"{st['max_diff']:.0f} step" + ("" if st["max_diff"] == 1 else "s")
    else:
        low = d["values_not_bit_identical"]
        tail = "bit-identical" if d["bit_identical"] else f"{100 * low / d['values']:.0f} % in low bits"
        values = f"{d['differing']} of {d['values']} ({tail})"
        largest = f"{d['max_diff']:.1e} abs"
    return [values, largest, _pct(d["top1_agreement"])]


def _parting_cell(r: dict) -> str:
    p = r.get("per_layer")
    if p is None:
        return ""
    if "error" in p:
        return f"per-layer run failed: {p['error'][:60]}"
    f = p["first_parting"]
    if f is None:
        return f"no tensor differs in the per-layer run ({p['tensors']} compared)"
    diff = f"{f['max_diff']:.0f} step(s)" if f["unit"] == "int8 steps" else f"{f['max_diff']:.1e} abs"
    return (f"`{f['short_name']}` ({f['op']}): {_share(f['share'])} of values, up to {diff}; "
            f"{p['tensors_differing']} of {p['tensors']} tensors differ")


def table(rows: list[dict]) -> list[str]:
    lines = ["| family | variant | file | board | ARM vs x86: values differing | largest | top-1 agree "
             "| top-1 vs PyTorch (ARM / x86) | SQNR dB vs PyTorch (ARM / x86) | XNNPACK ops (ARM / x86) "
             "| first tensor where ARM and x86 part |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        file = f"{FORMAT_NAMES.get(r['format'], r['format'])} {r['precision']}" if r.get("format") else "all"
        head = [r["family"], f"{r['variant']} @{r['side']}" if r.get("side") else r["variant"], file,
                r.get("board") or "all"]
        if "error" in r:
            lines.append("| " + " | ".join(head + [f"**failed** ({r['step']}): {r['error'][:160]}"] + [""] * 6) + " |")
            continue
        arm, x86 = r["arm"], r["x86"]
        cells = head + _diff_cells(r) + [
            f"{_pct(arm['top1_vs_pytorch'])} / {_pct(x86['top1_vs_pytorch'])}",
            f"{arm['sqnr_db_vs_pytorch']:.1f} / {x86['sqnr_db_vs_pytorch']:.1f}",
            f"{_xnn(arm, r['format'])} / {_xnn(x86, r['format'])}", _parting_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _where(rows: list[dict]) -> str:
    """'ESPNet v2 (pi4, pi5), GhostNet v1 (pi5)' in the rows' order."""
    boards: dict[str, list[str]] = {}
    for r in rows:
        boards.setdefault(r["family"], [])
        if r["board"] not in boards[r["family"]]:
            boards[r["family"]].append(r["board"])
    return ", ".join(f"{fam} ({', '.join(b)})" for fam, b in boards.items())


def reading(rows: list[dict]) -> str:
    """A paragraph that reads the table (every count taken from the rows)."""
    ok = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    if not ok:
        return "No file ran on a board; see the errors in the table."
    parts = []
    for fmt, prec in FILES:
        sel = [r for r in ok if (r["format"], r["precision"]) == (fmt, prec)]
        if not sel:
            continue
        name = f"{FORMAT_NAMES[fmt]} {prec}"
        same = [r for r in sel if r["arm_vs_x86"]["bit_identical"]]
        differ = [r for r in sel if not r["agree"]]
        stepped = [r for r in differ if _steps(r) is not None]
        if prec == "int8":
            text = f"{name}: {len(same)} of {len(sel)} runs bit-identical to x86"
            if stepped:
                worst = max(_steps(r)["max_diff"] for r in stepped)
                share = max(_steps(r)["share"] for r in stepped)
                text += (f", {len(stepped)} differ by up to {worst:.0f} int8 step(s) in up to {_share(share)} of "
                         f"the logits ({_where(stepped)})")
            rest = [r for r in differ if _steps(r) is None]
            if rest:
                text += f", {len(rest)} differ by up to {max(r['arm_vs_x86']['max_diff'] for r in rest):.2g} abs"
            close = [r for r in sel if r["agree"] and not r["arm_vs_x86"]["bit_identical"]]
            if close:
                text += (f", {len(close)} within 1e-4 of the largest logit but not bit-identical ({_where(close)}: "
                         f"float logits computed after the last int8 op)")
        else:
            text = (f"{name}: {len(sel) - len(differ)} of {len(sel)} runs within 1e-4 of the largest logit "
                    f"({len(same)} bit-identical)")
            if differ:
                text += f"; beyond it: {_where(differ)}"
        low = [r for r in differ if (r["arm_vs_x86"]["top1_agreement"] or 0) < 1]
        if low:
            text += (f"; top-1 changes in {len(low)} run(s), agreement down to "
                     f"{100 * min(r['arm_vs_x86']['top1_agreement'] for r in low):.1f} %")
        parts.append(text)
    text = "; ".join(parts) + "."
    by_board = {b: [r for r in ok if r["board"] == b] for b in sorted({r["board"] for r in ok})}
    if len(by_board) > 1:
        text += " Runs that differ from x86, per board: " + ", ".join(
            f"{b} {sum(not r['agree'] for r in rs)} of {len(rs)}" for b, rs in by_board.items()) + "."
        pairs = {}
        for r in ok:
            pairs.setdefault((r["family"], r["format"], r["precision"]), {})[r["board"]] = r
        both = [v for v in pairs.values() if len(v) == len(by_board)]
        same = [v for v in both if len({json.dumps(r["arm"]["top1_vs_pytorch"]) + json.dumps(
            (_steps(r) or r["arm_vs_x86"])["max_diff"]) + str(r["arm_vs_x86"]["values_not_bit_identical"])
            for r in v.values()}) == 1]
        text += (f" The two boards give the same comparison with x86 for {len(same)} of {len(both)} files "
                 f"(same differing values, largest difference and top-1 against PyTorch)")
        cross = [r for r in ok if r.get("vs_other_boards")]
        if cross:
            ident = sum(all(v["bit_identical"] for v in r["vs_other_boards"].values()) for r in cross)
            text += f"; their logits are bit-identical to each other for {ident} of {len(cross)} files"
        text += "."
    ops: dict[tuple[str, str], int] = {}
    for r in ok:
        f = (r.get("per_layer") or {}).get("first_parting")
        if f:
            key = (f"{FORMAT_NAMES[r['format']]} {r['precision']}", f["op"])
            ops[key] = ops.get(key, 0) + 1
    if ops:
        text += (" Where they part, the first differing tensor is the output of "
                 + ", ".join(f"{op} in {n} {name} run(s)" for (name, op), n in
                             sorted(ops.items(), key=lambda kv: -kv[1])) + ".")
    xnn = []
    for side, label in (("arm", "ARM"), ("x86", "x86")):
        t = [r for r in ok if r["format"] == "tflite" and r[side].get("xnnpack")]
        if t:
            full = sum(r[side]["xnnpack"]["delegated_ops"] == r[side]["xnnpack"]["ops"] for r in t)
            none = sum(not r[side]["xnnpack"]["delegated_ops"] for r in t)
            xnn.append(f"{label} wholly in {full} of {len(t)} TFLite runs, not at all in {none}")
    if xnn:
        text += " XNNPACK took the graph: " + "; ".join(xnn)
        partial: dict[str, set[str]] = {}
        for r in ok:
            x = r["arm"].get("xnnpack") if r["format"] == "tflite" else None
            if x and 0 < x["delegated_ops"] < x["ops"]:
                left = ", ".join(f"{op} x{n}" for op, n in sorted(x["left"].items()))
                partial.setdefault(f"{r['family']} ({x['delegated_ops']} of {x['ops']} ops; left: {left})",
                                   set()).add(r["precision"])
        if partial:
            text += "; partly in " + "; ".join(f"{k}, {'/'.join(sorted(v))}" for k, v in partial.items())
        text += "."
    gap = max(abs(r["arm"]["top1_vs_pytorch"] - r["x86"]["top1_vs_pytorch"]) for r in ok)
    sq = max(abs(r["arm"]["sqnr_db_vs_pytorch"] - r["x86"]["sqnr_db_vs_pytorch"]) for r in ok
             if r["precision"] == "int8") if any(r["precision"] == "int8" for r in ok) else None
    text += f" Against PyTorch, ARM's and x86's top-1 agreement differ by at most {100 * gap:.1f} points"
    text += "." if sq is None else f" and their int8 SQNRs by at most {sq:.1f} dB."
    if failed:
        text += f" {len(failed)} row(s) failed; the error is in the row."
    return text


def markdown(doc: dict) -> str:
    fp = doc["fingerprint"]
    boards = "; ".join(f"`qemu://{b}` {d.get('cpu_model')}, ISA features {', '.join(d.get('isa_features') or []) or '-'}"
                       for b, d in doc["boards"].items())
    host_rt = doc.get("x86") or {}
    runtimes = "x86 " + ", ".join(f"{k} {v}" for k, v in sorted(host_rt.items()))
    if all(d.get("runtime_versions") == host_rt for d in doc["boards"].values()):
        runtimes += ", the same on the boards"
    else:
        runtimes += "; " + "; ".join(f"{b} " + ", ".join(f"{k} {v}" for k, v in sorted(d["runtime_versions"].items()))
                                     for b, d in doc["boards"].items())
    ts = doc["train_settings"]
    lines = [
        "# ARM against x86: the same file on an emulated Raspberry Pi and on this machine", "",
        f"{fp['date']}, host {fp['cpu']} ({fp['cores']} cores, {fp['arch']}). Boards: {boards}. "
        f"Runtimes: {runtimes}.", "",
        "**The boards are emulated** (qemu-user running the aarch64 runtimes): they compute what the ARM "
        "kernels compute, but their run times are the emulator's, not a latency of a Pi. **No timings are "
        "reported.**", "",
        f"Each family's smallest variant at the smallest side it takes from 32 px up, 1 channel, 10 classes, "
        f"trained on the first {ts['limit']} Fashion-MNIST training images for {ts['epochs']} epoch; exported "
        f"as ONNX and TFLite, fp32 and int8 (int8 calibrated on {CALIB_SAMPLES} images). Every file runs on "
        f"the first {doc['samples']} Fashion-MNIST test images, batch 1, one thread, on each board and on "
        f"x86 (`edgekit.devices.crosscheck.compare_devices`). int8 files are compared in int8 steps of the "
        f"output scale; fp32 files count a value as differing beyond 1e-4 of the largest logit (the cell "
        f"also says whether they are bit-identical). PyTorch columns: each side's logits against the "
        f"PyTorch model on the same images. XNNPACK: ops the delegate took of the file's ops. Where ARM and "
        f"x86 differ, the case was run again with every op's output (XNNPACK still applied) and the first "
        f"tensor in graph order where they part is named.", "",
        *table(doc["rows"]), "",
        reading(doc["rows"]), "",
        "Command: `" + (f"EDGEKIT_BOARDS_DIR={doc['boards_dir']} " if doc.get("boards_dir") else "") + f"{doc['command']}`"
        + f"; {doc['seconds'] / 60:.0f} min wall time on this machine, training and export included.", ""]
    return "\n".join(lines)


def command(argv: list[str]) -> str:
    """The command line as typed from the project root (the interpreter relative to it when inside)."""
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(ROOT))
    except ValueError:
        exe_s = exe.name
    return " ".join(shlex.quote(a) for a in [exe_s, "bench/arm.py", *argv])


# ---- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_FAMILIES)}")
    ap.add_argument("--families", help=f"comma list of {', '.join(EDGE_VARIANTS)} (default: all nine)")
    ap.add_argument("--boards", default=",".join(BOARDS), help=f"comma list of {', '.join(BOARDS)}")
    ap.add_argument("--samples", type=int, default=64, help="Fashion-MNIST test images per run")
    ap.add_argument("--out", default=str(RESULTS / "arm"), help="results path without suffix (.json and .md)")
    args = ap.parse_args(argv)
    families = QUICK_FAMILIES if args.quick else tuple(EDGE_VARIANTS)
    if args.families:
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        unknown = [f for f in families if f not in EDGE_VARIANTS]
        if unknown:
            ap.error(f"unknown families {unknown}; choose from {', '.join(EDGE_VARIANTS)}")
    boards = tuple(b.strip() for b in args.boards.split(",") if b.strip())
    if [b for b in boards if b not in BOARDS] or not boards:
        ap.error(f"--boards: choose from {', '.join(BOARDS)}")
    if args.samples < 1:
        ap.error("--samples must be >= 1")

    from edgekit.devices.measure import real_inputs
    from edgekit.devices.base import open_model
    from edgekit.devices.stats import Protocol
    protocol = Protocol(threads=1, warmup=0, runs=1, max_runs=1, target_cv=1.0)
    out = Path(args.out)
    start = time.time()
    doc: dict[str, Any] = {
        "benchmark": "arm", "fingerprint": fingerprint(["bench/arm.py", *argv]), "command": command(argv),
        "boards_dir": os.environ.get("EDGEKIT_BOARDS_DIR"), "quick": args.quick, "families": list(families),
        "boards_requested": list(boards), "samples": args.samples, "protocol": protocol.to_dict(),
        "timings": "none reported: the boards are emulated (qemu-user), their run times are not a latency",
        "train_settings": asdict(TRAIN), "export": {"calib_samples": CALIB_SAMPLES, "holdout": HOLDOUT,
                                                       "force": True},
        "variants": {}, "boards": {}, "rows": [], "seconds": 0.0}

    def save() -> None:
        doc["seconds"] = round(time.time() - start, 1)
        doc["fingerprint"]["loadavg_end"] = list(os.getloadavg())
        write_json(out.with_suffix(".json"), doc)
        out.with_suffix(".md").write_text(markdown(doc))

    for fam in families:
        variant = EDGE_VARIANTS[fam]
        side = side_for(variant, TRAIN.resolution)
        base = {"family": fam, "variant": variant, "side": side}
        log(f"{fam}: {variant} at {side}x{side}")
        info: dict[str, Any] = {"side": side}
        doc["variants"][fam] = info
        try:
            model, weights, record = trained_model(variant, TRAIN, log=log)
            info["training"] = record
            files, errors, secs = export_files(variant, model, weights)
            info.update(export_seconds=secs, export_errors=errors,
                        files={f"{k[0]}-{k[1]}": str(p.relative_to(ROOT)) for k, p in files.items()})
        except Exception as e:  # noqa: BLE001 - the family's row says what failed
            log(f"  failed before any run: {first_line(e)}")
            info["error"] = first_line(e)
            info["traceback"] = traceback.format_exc()[-3000:]
            doc["rows"].append({**base, "format": None, "precision": None, "board": None,
                                "step": "training/export", "error": first_line(e)})
            save()
            continue
        model.eval()
        for fmt, prec in FILES:
            path = files.get((fmt, prec))
            keys = {**base, "format": fmt, "precision": prec}
            if path is None:
                msg = errors.get(fmt, "the exporter wrote no such file")
                for board in boards:
                    doc["rows"].append({**keys, "board": board, "step": "export", "error": msg})
                continue
            try:
                mf = open_model(path)
                _, nchw = real_inputs(mf, data="fashion-mnist", samples=args.samples)
                torch.set_num_threads(1)
                with torch.no_grad():
                    ref = model(torch.from_numpy(nchw)).numpy().astype(np.float64)
                labels = _labels(args.samples, mf.manifest.inputs[0].shape[0])
                pytorch = {"top1_vs_labels": float(np.mean(ref.argmax(1) == labels))}
            except Exception as e:  # noqa: BLE001
                for board in boards:
                    doc["rows"].append({**keys, "board": board, "step": "reference", "error": first_line(e)})
                continue
            finally:
                torch.set_num_threads(os.cpu_count() or 1)
            arm_outputs: dict[str, np.ndarray] = {}  # board -> its logits, to compare the boards with each other
            for board in boards:
                log(f"  {path.name} on qemu://{board} vs local ...")
                t0 = time.perf_counter()
                try:
                    found, a = compare_file(path, board, ref, labels, args.samples, protocol, model)
                    row = {**keys, "board": board, "file": str(path.relative_to(ROOT)), "pytorch": pytorch, **found}
                    row["vs_other_boards"] = {
                        other: {"bit_identical": bool(np.array_equal(a, y)),
                                "values_not_bit_identical": int(np.count_nonzero(a != y))}
                        for other, y in arm_outputs.items() if y.shape == a.shape}
                    arm_outputs[board] = a
                except Exception as e:  # noqa: BLE001 - the row says what failed
                    log(f"    failed: {first_line(e)}")
                    doc["rows"].append({**keys, "board": board, "step": "run", "error": first_line(e),
                                        "traceback": traceback.format_exc()[-3000:]})
                    save()
                    continue
                row["wall_seconds_not_a_latency"] = round(time.perf_counter() - t0, 1)
                doc["rows"].append(row)
                d = row["arm_vs_x86"]
                log(f"    ARM vs x86: {d['differing']} of {d['values']} differ, largest {d['max_diff']:.3g} "
                    f"({d['unit']}), bit-identical {d['bit_identical']}; top-1 vs PyTorch ARM "
                    f"{_pct(row['arm']['top1_vs_pytorch'])} x86 {_pct(row['x86']['top1_vs_pytorch'])}; XNNPACK "
                    f"{_xnn(row['arm'], fmt)} / {_xnn(row['x86'], fmt)}")
                if board not in doc["boards"]:
                    a = row["arm"]
                    doc["boards"][board] = {"cpu_model": a["cpu_model"], "isa_features": a["isa_features"],
                                            "emulated": a["emulated"], "runtime_versions": {}}
                doc["boards"][board]["runtime_versions"][row["arm"]["runtime"]] = row["arm"]["runtime_version"]
                doc.setdefault("x86", {})[row["x86"]["runtime"]] = row["x86"]["runtime_version"]
                save()
    save()
    log("")
    log(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
