"""int8 against fp32 for one variant of each of the nine families, trained on Fashion-MNIST.

For each family: train briefly (cached in bench/out/weights), export the four files with
``edgekit.export.export`` (default settings), and measure on the Fashion-MNIST test images the top-1
of PyTorch and of each file, the SQNR of each file's logits against PyTorch's, file sizes, and the
int8/fp32 latency of both runtimes at 1 thread (fp32 and int8 timed alternately in one loop, so
load from other processes falls on both alike). Beside edgekit's files, on the same weights and the
same calibration images: the stock routes, ``torch.onnx.export`` + ``onnxruntime.quantization.
quantize_static`` with its defaults, and ``litert_torch.convert`` with its PT2E quantizer and
``get_symmetric_quantization_config()`` defaults. A stock route that fails is recorded with the
error's first line. Finally ``bench/export_time.py`` times the export of ghostnet_1_0 at 224x224
in a fresh process.

    .venv/bin/python bench/quantization.py            # all nine families (~40 min cold, less cached)
    .venv/bin/python bench/quantization.py --quick    # smoke run: two families, 1000 test images
    .venv/bin/python bench/quantization.py --families fbnet_a,ghostnet_1_0 --threads 1

Writes bench/results/quantization.json (everything + machine fingerprint) and
bench/results/quantization.md (the README table).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import (FAMILIES, OUT, QUICK_FAMILIES, RESULTS, ROOT, TrainSettings,  # noqa: E402
                           alternating_times, captured, family_and_variant, fingerprint, first_line, trained_model,
                           write_json)

DROP_TARGET = {False: 0.5, True: 1.0}  # points; True = hard-swish / SE family
TFLITE_SPEEDUP_TARGET = 1.5
EXPORT_SECONDS_TARGET = 60.0


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- running files ------------------------------------------------------------------------------

def _runner(path: Path, manifest: dict | None, threads: int):
    from edgekit.devices.agent import Runner
    with captured():  # LiteRT announces its XNNPACK delegate on fd 2
        return Runner(str(path), manifest, threads=threads)


def _layout_fn(runner, chw: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """NCHW sample -> the file's input layout (edgekit's TFLite files are NHWC, stock ones NCHW)."""
    shape = tuple(runner.input_specs[0]["shape"][1:])
    if shape == tuple(chw):
        return lambda x: x
    if shape == (chw[1], chw[2], chw[0]):
        return lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (1, C, H, W) -> (1, H, W, C)
    raise ValueError(f"file input shape {shape} fits neither NCHW nor NHWC {chw}")


def evaluate_file(path: Path, manifest: dict | None, x: np.ndarray, labels: np.ndarray, ref: np.ndarray,
                  threads: int) -> dict[str, Any]:
    """Top-1 on ``x`` (batch 1 at a time, as the files are static batch-1) and parity with PyTorch."""
    from edgekit.parity import compare
    runner = _runner(path, manifest, threads)
    to_in = _layout_fn(runner, x.shape[1:])
    t0 = time.perf_counter()
    logits = np.concatenate([runner(to_in(x[i:i + 1]))[0].reshape(1, -1) for i in range(len(x))])
    parity = compare(ref[:len(x)], logits)
    return {"n": len(x), "top1": float((logits.argmax(1) == labels[:len(x)]).mean()),
            "sqnr_db": parity.sqnr_db, "cosine": parity.cosine, "top1_agreement": parity.top1_agreement,
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def paired_latency(fp32: Path, int8: Path, manifests: tuple[dict | None, dict | None], x0: np.ndarray, *,
                   threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Median latency of fp32 and int8 from alternating single invokes (order swapped every
    iteration), pinned to one core at 1 thread; ratio = int8 / fp32 time, speedup = its inverse."""
    runners = [_runner(p, m, threads) for p, m in zip((fp32, int8), manifests)]
    for r in runners:
        r.feed([_layout_fn(r, x0.shape[1:])(x0)])  # input set once, outside the timed region
    pin = threads == 1 and hasattr(os, "sched_setaffinity")
    times = alternating_times([r.invoke for r in runners], runs=runs, warmup=warmup, pin=pin)
    stats = []
    for t in times:
        ms = np.asarray(t) * 1e3
        stats.append({"median_ms": round(float(np.median(ms)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
                      "min_ms": round(float(ms.min()), 4), "cv": round(float(ms.std() / ms.mean()), 3)})
    ratio = stats[1]["median_ms"] / stats[0]["median_ms"]
    return {"fp32": stats[0], "int8": stats[1], "int8_over_fp32": round(ratio, 3), "speedup": round(1 / ratio, 3),
            "runs": runs, "warmup": warmup, "threads": threads, "pinned_core": pin,
            "loadavg": list(os.getloadavg())}


# ---- edgekit's route ------------------------------------------------------------------------------

def edgekit_route(variant: str, model, weights: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgekit.exporters.artifact import sha256_file
    from edgekit.export import ExportSettings, export
    out = OUT / "files" / f"{variant}-r{ctx['side']}"
    out.mkdir(parents=True, exist_ok=True)
    settings = ExportSettings()
    refused = None
    t0 = time.perf_counter()
    try:
        files = export(model, name=variant, out=out, settings=settings, weights_file=weights,
                       weights_sha256=sha256_file(weights))
    except ValueError as e:
        if "not faithful" not in str(e):  # a converter failure: recorded, the table shows it
            return {"converts": False, "error": str(e)[:1500], "settings": _settings_dict(settings)}
        # below the SQNR floor with default settings: recorded, then measured as written with --force
        refused = str(e)[:1500]
        log(f"    default export refused: {first_line(e)}; measuring the --force files")
        settings = ExportSettings(force=True)
        files = export(model, name=variant, out=out, settings=settings, weights_file=weights,
                       weights_sha256=sha256_file(weights))
    except Exception as e:  # recorded: the table shows the failure instead of numbers
        return {"converts": False, "error": str(e)[:1500], "settings": _settings_dict(settings)}
    res: dict[str, Any] = {"converts": True, "export_seconds": round(time.perf_counter() - t0, 1),
                           "default_export_refused": refused, "settings": _settings_dict(settings), "files": {}}
    paths = {}
    for f in files:
        m = f.artifact.manifest
        key = f"{m.format}-{m.precision}"
        paths[key] = (f.artifact.path, m.to_dict())
        entry = {"file": str(f.artifact.path.relative_to(ROOT)), "size_bytes": f.size_bytes,
                 "export_parity": f.parity.to_dict(), "notes": list(f.notes),
                 "calibration": m.calibration.method if m.calibration else None,
                 "calibration_tries": m.metrics.get("calibration_tries")}
        if m.format == "tflite":
            from edgekit.exporters.tflite import QUANT_OPS, op_histogram
            hist = op_histogram(f.artifact.path.read_bytes())
            entry["quant_ops"] = {op: hist.get(op, 0) for op in QUANT_OPS}
        else:
            from edgekit.exporters.onnx import int8_structure
            s = int8_structure(f.artifact.path.read_bytes())
            entry["quant_ops"] = {"QuantizeLinear": s["QuantizeLinear"], "DequantizeLinear": s["DequantizeLinear"]}
        log(f"    {key}: evaluating on {len(ctx['x'])} test images ...")
        entry.update(evaluate_file(f.artifact.path, m.to_dict(), ctx["x"], ctx["labels"], ctx["ref"], 1))
        res["files"][key] = entry
    for fmt in ("onnx", "tflite"):
        if f"{fmt}-fp32" in paths and f"{fmt}-int8" in paths:
            (p32, m32), (p8, m8) = paths[f"{fmt}-fp32"], paths[f"{fmt}-int8"]
            res[f"{fmt}_latency"] = paired_latency(p32, p8, (m32, m8), ctx["x"][:1], threads=ctx["threads"],
                                                   runs=ctx["runs"], warmup=ctx["warmup"])
    return res


def _settings_dict(s) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(s)


# ---- stock routes ---------------------------------------------------------------------------------

class _Reader:
    """onnxruntime CalibrationDataReader over the calibration images, one batch-1 sample per call."""

    def __init__(self, x: np.ndarray, name: str):
        self.x, self.name, self.i = x, name, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}


def _tail(box: list[str], n: int = 600) -> str:
    return (box[0] if box else "")[-n:]


def stock_onnx(model, example: torch.Tensor, calib: np.ndarray, work: Path) -> dict[str, Any]:
    """torch.onnx.export with its defaults, then quantize_static with its defaults (QDQ, int8
    activations and weights, per-tensor, MinMax) on the calibration images."""
    import onnx
    from onnxruntime.quantization import quantize_static
    res: dict[str, Any] = {"route": "torch.onnx.export (defaults) + onnxruntime.quantization.quantize_static "
                                    "(defaults: QDQ, QInt8 activations, QInt8 weights, per_channel=False, MinMax)"}
    raw = work / "stock-raw.onnx"
    box: list[str] = []
    try:
        with captured() as box:
            torch.onnx.export(copy.deepcopy(model).eval(), (example,), str(raw))
        proto = onnx.load(str(raw))  # pulls in external data if the exporter wrote any
    except Exception as e:
        res["fp32"] = {"converts": False, "error": first_line(e), "log_tail": _tail(box)}
        return res
    fp32 = work / "stock-fp32.onnx"
    fp32.write_bytes(proto.SerializeToString())
    res["fp32"] = {"converts": True, "path": fp32, "size_bytes": fp32.stat().st_size, "opset": proto.opset_import[0].version}
    int8 = work / "stock-int8.onnx"
    box = []
    try:
        with captured() as box:
            quantize_static(str(fp32), str(int8), _Reader(calib, proto.graph.input[0].name))
    except Exception as e:
        res["int8"] = {"converts": False, "error": first_line(e), "log_tail": _tail(box)}
        return res
    from edgekit.exporters.onnx import int8_structure
    s = int8_structure(int8.read_bytes())
    res["int8"] = {"converts": True, "path": int8, "size_bytes": int8.stat().st_size,
                   "quant_ops": {"QuantizeLinear": s["QuantizeLinear"], "DequantizeLinear": s["DequantizeLinear"]},
                   "float_convs": len(s["float_convs"])}
    return res


def stock_tflite(model, example: torch.Tensor, calib: np.ndarray, work: Path) -> dict[str, Any]:
    """litert_torch.convert for fp32; for int8 its documented PT2E flow: torch.export, prepare_pt2e
    with PT2EQuantizer + get_symmetric_quantization_config() (defaults), calibration, convert_pt2e,
    litert_torch.convert with QuantConfig(pt2e_quantizer=...)."""
    res: dict[str, Any] = {"route": "litert_torch.convert; int8: PT2EQuantizer().set_global("
                                    "get_symmetric_quantization_config()) + prepare_pt2e / convert_pt2e"}
    from edgekit.exporters.tflite import QUANT_OPS, op_histogram
    box: list[str] = []
    try:
        with captured() as box:
            import litert_torch
            data = bytes(litert_torch.convert(copy.deepcopy(model).eval(), (example,)).model_content())
        fp32 = work / "stock-fp32.tflite"
        fp32.write_bytes(data)
        hist = op_histogram(data)
        res["fp32"] = {"converts": True, "path": fp32, "size_bytes": len(data), "transposes": hist.get("TRANSPOSE", 0)}
    except Exception as e:
        res["fp32"] = {"converts": False, "error": first_line(e), "log_tail": _tail(box)}
    box = []
    try:
        with captured() as box:
            import litert_torch
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config())
            m = torch.export.export(copy.deepcopy(model).eval(), (example,)).module()
            m = prepare_pt2e(m, quantizer)
            with torch.no_grad():
                for i in range(len(calib)):
                    m(torch.from_numpy(calib[i:i + 1]))
            m = convert_pt2e(m, fold_quantize=False)
            data = bytes(litert_torch.convert(m, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
                         .model_content())
        int8 = work / "stock-int8.tflite"
        int8.write_bytes(data)
        hist = op_histogram(data)
        res["int8"] = {"converts": True, "path": int8, "size_bytes": len(data),
                       "quant_ops": {op: hist.get(op, 0) for op in QUANT_OPS}}
    except Exception as e:
        res["int8"] = {"converts": False, "error": first_line(e), "log_tail": _tail(box)}
    return res


def measure_stock(res: dict[str, Any], ctx: dict[str, Any], fp32_limit: int) -> None:
    """Top-1 / SQNR of the stock files (fp32 on the first ``fp32_limit`` images: the same network
    as edgekit's fp32 file) and their paired latency; file paths are replaced by relative ones."""
    for prec in ("fp32", "int8"):
        e = res.get(prec, {})
        if e.get("converts"):
            n = len(ctx["x"]) if prec == "int8" else min(fp32_limit, len(ctx["x"]))
            try:
                e.update(evaluate_file(e["path"], None, ctx["x"][:n], ctx["labels"], ctx["ref"], 1))
            except Exception as err:  # a file that converts but does not run is a result too
                e["runs"] = False
                e["error_running"] = first_line(err)
    f, q = res.get("fp32", {}), res.get("int8", {})
    if f.get("converts") and q.get("converts") and "top1" in q:
        res["latency"] = paired_latency(f["path"], q["path"], (None, None), ctx["x"][:1], threads=ctx["threads"],
                                        runs=ctx["runs"], warmup=ctx["warmup"])
    for e in (f, q):
        if "path" in e:
            e["path"] = str(Path(e["path"]).relative_to(ROOT))


# ---- one family -----------------------------------------------------------------------------------

def run_family(fam: str, variant: str, args, ts: TrainSettings) -> dict[str, Any]:
    from edgekit.calibration.data import calibration_batch, load_dataset, preprocess, preprocessing_for
    from edgekit.export import ExportSettings
    spec = FAMILIES[fam]
    t_start = time.perf_counter()
    model, weights, train_rec = trained_model(variant, ts, log)
    pre = preprocessing_for(model.default_cfg)
    side = pre.resolution[0]
    ds = load_dataset("fashion-mnist", split="test", limit=args.test_images)
    x = preprocess(ds.images, pre)  # (N, 1, H, W) float32
    labels = ds.labels.astype(np.int64)
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x[i:i + 500])).numpy() for i in range(0, len(x), 500)])
    ctx = {"x": x, "labels": labels, "ref": ref, "side": side, "threads": args.threads, "runs": args.runs,
           "warmup": args.warmup}
    res: dict[str, Any] = {"family": fam, "variant": variant, "hard": spec["hard"], "activations": spec["acts"],
                           "resolution": [side, side], "train": train_rec, "test_images": len(x),
                           "torch_top1": float((ref.argmax(1) == labels).mean())}
    log(f"  PyTorch top-1 {100 * res['torch_top1']:.2f} % on {len(x)} test images")
    log("  edgekit export (onnx, tflite x fp32, int8) ...")
    res["edgekit"] = edgekit_route(variant, model, weights, ctx)
    s = ExportSettings()
    calib = calibration_batch(s.calib, pre, samples=s.calib_samples, seed=0, split="train")  # = export's
    example = torch.zeros(1, *x.shape[1:])
    work = OUT / "files" / f"{variant}-r{side}" / "stock"
    work.mkdir(parents=True, exist_ok=True)
    if not args.no_stock:
        log("  stock ONNX (torch.onnx.export + quantize_static defaults) ...")
        res["stock_onnx"] = stock_onnx(model, example, calib, work)
        measure_stock(res["stock_onnx"], ctx, args.stock_fp32_images)
        log("  stock TFLite (litert-torch + default PT2E) ...")
        res["stock_tflite"] = stock_tflite(model, example, calib, work)
        measure_stock(res["stock_tflite"], ctx, args.stock_fp32_images)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    res["targets"] = family_targets(res)
    return res


def family_targets(r: dict[str, Any]) -> dict[str, Any]:
    """Drop of int8 vs the fp32 file of the same format (points), and TFLite int8 speed-up."""
    ek = r.get("edgekit", {})
    files = ek.get("files", {})
    limit = DROP_TARGET[r["hard"]]
    out: dict[str, Any] = {"drop_limit_points": limit}
    for fmt in ("onnx", "tflite"):
        f32, q8 = files.get(f"{fmt}-fp32"), files.get(f"{fmt}-int8")
        if f32 and q8:
            drop = 100 * (f32["top1"] - q8["top1"])
            out[f"{fmt}_drop_points"] = round(drop, 2)
            out[f"{fmt}_drop_vs_torch_points"] = round(100 * (r["torch_top1"] - q8["top1"]), 2)
            out[f"{fmt}_drop_met"] = drop <= limit
    lat = ek.get("tflite_latency")
    if lat:
        out["tflite_speedup"] = lat["speedup"]
        out["tflite_speedup_met"] = lat["speedup"] >= TFLITE_SPEEDUP_TARGET
    lat = ek.get("onnx_latency")
    if lat:
        out["onnx_speedup"] = lat["speedup"]
        out["onnx_int8_slower"] = lat["speedup"] < 1.0
    return out


# ---- export time ----------------------------------------------------------------------------------

def run_export_time(args) -> dict[str, Any]:
    """bench/export_time.py in a fresh interpreter (no converter cache, imports counted separately)."""
    out = Path(args.out) / "export_time.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "bench" / "export_time.py"), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    doc: dict[str, Any] = {"command": " ".join(str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c
                                               for c in cmd[1:]),
                           "process_seconds": round(time.perf_counter() - t0, 1), "returncode": proc.returncode}
    if out.is_file():
        doc.update({k: v for k, v in json.loads(out.read_text()).items() if k != "fingerprint"})
    else:
        doc["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:400]
    return doc


# ---- report ---------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _kb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1024:,.0f}"


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def markdown(doc: dict[str, Any]) -> str:
    fams = doc["families"]
    fp = doc["fingerprint"]
    lines = [f"Fashion-MNIST, 1 channel, 10 classes; each model trained {doc['train']['epochs']} "
             f"epoch{'s' if doc['train']['epochs'] != 1 else ''} on the first "
             f"{doc['train']['limit']:,} training images; top-1 on {doc['test_images']:,} test images. "
             f"int8 = int8 weights and activations, calibrated on 256 training images (minmax; below the SQNR "
             f"floor, again with mse and percentile). "
             f"Latency: batch 1, {doc['threads']} thread, pinned core, median of {doc['runs']} runs with fp32 and "
             f"int8 invoked alternately; speed-up = fp32 time / int8 time. {fp['cpu']}, {fp['date'][:10]}; "
             f"torch {fp['versions']['torch']}, onnxruntime {fp['versions']['onnxruntime']}, ai-edge-litert "
             f"{fp['versions']['ai-edge-litert']}, litert-torch {fp['versions']['litert-torch']}, ai-edge-quantizer "
             f"{fp['versions']['ai-edge-quantizer']}.", "",
             "edgekit (`edgekit.export.export`, default settings):", "",
             "| family | variant | input | PyTorch | ONNX fp32 | ONNX int8 | TFLite fp32 | TFLite int8 | drop ONNX / TFLite (pts) "
             "| SQNR int8 ONNX / TFLite (dB) | size ONNX fp32 / int8 (KB) | size TFLite fp32 / int8 (KB) "
             "| int8 speed-up ONNX | int8 speed-up TFLite |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fam, r in fams.items():
        if "error" in r:
            lines.append(f"| {fam} | {r.get('variant', '')} | | failed: {r['error']} |||||||||||")
            continue
        files = _get(r, "edgekit", "files", default={}) or {}
        t = r.get("targets", {})
        res = f"{r['resolution'][0]}²"
        if not _get(r, "edgekit", "converts"):
            lines.append(f"| {fam} | {r['variant']} | {res} | {_pct(r['torch_top1'])} | export failed: "
                         f"{_get(r, 'edgekit', 'error')} |||||||||")
            continue
        f = lambda k, m: _get(files, k, m)  # noqa: E731
        mark = " †" if _get(r, "edgekit", "default_export_refused") else ""
        how = lambda k: "" if f(k, "calibration") in (None, "minmax") else f" ({f(k, 'calibration')})"  # noqa: E731
        lines.append(
            f"| {fam} | {r['variant']}{mark} | {res} | {_pct(r['torch_top1'])} | {_pct(f('onnx-fp32', 'top1'))} | "
            f"{_pct(f('onnx-int8', 'top1'))}{how('onnx-int8')} | {_pct(f('tflite-fp32', 'top1'))} | "
            f"{_pct(f('tflite-int8', 'top1'))}{how('tflite-int8')} | "
            f"{t.get('onnx_drop_points', '–'):+} / {t.get('tflite_drop_points', '–'):+} | "
            f"{f('onnx-int8', 'sqnr_db'):.1f} / {f('tflite-int8', 'sqnr_db'):.1f} | "
            f"{_kb(f('onnx-fp32', 'size_bytes'))} / {_kb(f('onnx-int8', 'size_bytes'))} | "
            f"{_kb(f('tflite-fp32', 'size_bytes'))} / {_kb(f('tflite-int8', 'size_bytes'))} | "
            f"{_speed(_get(r, 'edgekit', 'onnx_latency'))} | {_speed(_get(r, 'edgekit', 'tflite_latency'))} |")
    forced = [fam for fam, r in fams.items() if _get(r, "edgekit", "default_export_refused")]
    if forced:
        lines += ["", "† default export refused an int8 file below the 20 dB SQNR floor (on 256 held-out images); "
                  "the numbers are those of the files written with `force=True`: " + ", ".join(forced) + "."]
    retried = [f"{fam} {k.split('-')[0]}: " + ", ".join(f"{t['method']} {t['sqnr_db']} dB" for t in tries)
               for fam, r in fams.items() for k, e in (_get(r, "edgekit", "files", default={}) or {}).items()
               if len(tries := e.get("calibration_tries") or []) > 1]
    if retried:
        lines += ["", "(mse), (percentile): minmax calibration was below the floor and export calibrated again, "
                  "keeping the most faithful method (SQNR on 256 held-out images): " + "; ".join(retried) + "."]
    lines += ["", "Stock routes on the same weights and calibration images: ONNX = `torch.onnx.export` + "
              "`quantize_static` defaults (QDQ, int8 activations, per-tensor weights, MinMax); TFLite = "
              "`litert_torch.convert` + PT2E with `get_symmetric_quantization_config()` defaults. Q/DQ = "
              "QUANTIZE + DEQUANTIZE ops in the int8 .tflite (edgekit's in brackets).", "",
              "| family | stock ONNX int8 top-1 | SQNR (dB) | size (KB) | int8 speed-up | stock TFLite int8 top-1 "
              "| SQNR (dB) | size (KB) | int8 speed-up | Q/DQ ops |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fam, r in fams.items():
        if "error" in r or "stock_onnx" not in r:
            continue
        cells = []
        for route in ("stock_onnx", "stock_tflite"):
            q = _get(r, route, "int8", default={}) or {}
            f32 = _get(r, route, "fp32", default={}) or {}
            if not f32.get("converts", False) and not q.get("converts", False):
                cells += [f"fp32 fails: {_short(f32.get('error', '?'), 160)}", "", "", ""]
            elif not q.get("converts"):
                cells += [f"fails: {_short(q.get('error', '?'), 200)}", "", "", ""]
            elif "top1" not in q:
                cells += [f"converts, does not run: {q.get('error_running', '?')[:120]}", "", _kb(q.get("size_bytes")), ""]
            else:
                cells += [_pct(q["top1"]), f"{q['sqnr_db']:.1f}", _kb(q["size_bytes"]), _speed(_get(r, route, "latency"))]
        qd = _get(r, "stock_tflite", "int8", "quant_ops")
        ek = _get(r, "edgekit", "files", "tflite-int8", "quant_ops") or {}
        qd_s = "–" if not qd else f"{sum(qd.values())} ({sum(ek.values()) if ek else '–'})"
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {qd_s} |")
    et = doc.get("export_time")
    if et:
        lines += ["", _export_time_line(et)]
    return "\n".join(lines) + "\n"


def _short(err: str, n: int) -> str:
    """An error for a table cell: site-packages paths cut to the package, one line, ``n`` chars."""
    text = err.replace(str(Path(torch.__file__).parent.parent) + "/", "").replace("|", "/")
    return text.splitlines()[0][:n] if text else "?"


def _speed(lat: dict | None) -> str:
    return "–" if not lat else f"{lat['speedup']:.2f}x"


def _export_time_line(et: dict[str, Any]) -> str:
    if "export_seconds" not in et:
        return f"Export time of ghostnet_1_0 at 224x224: failed ({et.get('error', '?')})."
    return (f"Export of all four files of {et['model']} at {et['resolution']}x{et['resolution']} "
            f"(`edgekit.export.export`, default settings, fresh process): {et['export_seconds']:.1f} s wall"
            + (f", {et['export_cpu_seconds']:.1f} s CPU" if "export_cpu_seconds" in et else "") + " "
            f"(target < {EXPORT_SECONDS_TARGET:.0f} s; "
            f"{et.get('process_seconds', et.get('process_seconds_to_here', float('nan'))):.1f} s for the whole "
            f"process with imports; load average {_load(et)}).")


def _load(et: dict[str, Any]) -> str:
    la = _get(et, "fingerprint", "loadavg_start")
    return "?" if not la else f"{la[0]:.1f} on {_get(et, 'fingerprint', 'cores')} cores"


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    misses, met = [], []
    for fam, r in doc["families"].items():
        t = r.get("targets")
        if not t:
            misses.append(f"{fam}: no result ({r.get('error') or _get(r, 'edgekit', 'error')})")
            continue
        refused = _get(r, "edgekit", "default_export_refused")
        if refused:
            why = next((ln.strip() for ln in refused.splitlines() if ln.strip().startswith("parity check failed")),
                       refused.splitlines()[0])
            misses.append(f"{fam}: default export refused ({refused.split(' is not')[0]}): {why[:200]}")
        for fmt in ("onnx", "tflite"):
            if f"{fmt}_drop_met" in t:
                (met if t[f"{fmt}_drop_met"] else misses).append(
                    f"{fam} {fmt} int8 drop {t[f'{fmt}_drop_points']:+.2f} pts (limit {t['drop_limit_points']})")
        if "tflite_speedup_met" in t:
            (met if t["tflite_speedup_met"] else misses).append(
                f"{fam} TFLite int8 speed-up {t['tflite_speedup']:.2f}x (target {TFLITE_SPEEDUP_TARGET}x)")
        if t.get("onnx_int8_slower"):
            misses.append(f"{fam} ONNX int8 slower than fp32: speed-up {t['onnx_speedup']:.2f}x (reported)")
    et = doc.get("export_time")
    if et and "export_seconds" in et:
        (met if et["export_seconds"] < EXPORT_SECONDS_TARGET else misses).append(
            f"export of {et['model']} at {et['resolution']}: {et['export_seconds']:.1f} s (target < 60 s)")
    return {"met": met, "missed_or_reported": misses}


# ---- main -----------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smoke run: families {', '.join(QUICK_FAMILIES)}; 1000 test "
                   f"images; no export timing; results in bench/out/quick")
    p.add_argument("--families", help="comma list of families or variants (default: all nine; a family's other variant, e.g. "
                   "espnetv2_2_0, is measured in its family's row)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for the latency pairs")
    p.add_argument("--out", default=str(RESULTS), help="results directory")
    p.add_argument("--test-images", type=int, help="test images for top-1 (default 10000; --quick 1000)")
    p.add_argument("--stock-fp32-images", type=int, default=1000,
                   help="test images for the stock fp32 files (same network as edgekit's fp32 files)")
    p.add_argument("--runs", type=int, default=60, help="timed runs per file (>= 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--resolution", type=int, default=32, help="input side (raised to a model's minimum)")
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--no-stock", action="store_true", help="skip the stock routes")
    p.add_argument("--no-export-time", action="store_true", help="skip bench/export_time.py")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="combine result files of earlier runs (families in table order; the last file given wins "
                        "for a family in several) with --out/export_time.json, and rewrite the report")
    args = p.parse_args(argv)
    if args.test_images is None:
        args.test_images = 1000 if args.quick else 10000
    if args.quick:  # a smoke run: its figures stay out of bench/results, and the 224 px export is not timed
        args.no_export_time = True
        if args.out == str(RESULTS):
            args.out = str(OUT / "quick")
    if args.runs < 50:
        p.error(f"--runs {args.runs}: at least 50 timed runs")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.merge:
        return merge(args, argv)
    torch.set_num_threads(1)  # shared 2-core machine: one training thread measured no slower overall
    if args.families:
        fams = [family_and_variant(k.strip()) for k in args.families.split(",") if k.strip()]
        twice = sorted({f for f, _ in fams if sum(g == f for g, _ in fams) > 1})
        if twice:  # results are keyed by family: a second variant would overwrite the first's row
            raise SystemExit(f"--families names more than one variant of {', '.join(twice)}; the results keep "
                             f"one row per family, so run each variant with its own --out")
    else:
        fams = [(f, FAMILIES[f]["variant"]) for f in (QUICK_FAMILIES if args.quick else FAMILIES)]
    ts = TrainSettings(resolution=args.resolution, limit=args.train_images, epochs=args.epochs)
    out = Path(args.out)
    name = "quantization-quick" if args.quick else "quantization"
    doc: dict[str, Any] = {"fingerprint": fingerprint(["bench/quantization.py", *argv]), "quick": args.quick,
                           "train": {"resolution": ts.resolution, "limit": ts.limit, "epochs": ts.epochs,
                                     "batch_size": ts.batch_size, "seed": ts.seed, "torch_threads": 1},
                           "test_images": args.test_images, "threads": args.threads, "runs": args.runs,
                           "warmup": args.warmup, "families": {}}
    t0 = time.perf_counter()
    for fam, variant in fams:
        log(f"== {fam} ({variant})")
        try:
            doc["families"][fam] = run_family(fam, variant, args, ts)
        except Exception as e:  # one family's failure is a row of the table, not the end of the bench
            log(f"  FAILED: {first_line(e)}")
            doc["families"][fam] = {"family": fam, "variant": variant, "error": first_line(e)}
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        _save(doc, out, name)
        log(f"  done ({doc['families'][fam].get('seconds', '?')} s; {doc['seconds']:.0f} s so far)")
    if not args.no_export_time:
        log("== export time: ghostnet_1_0 at 224x224, fresh process")
        doc["export_time"] = run_export_time(args)
        log(f"  {_export_time_line(doc['export_time'])}")
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc["fingerprint"]["loadavg_end"] = list(os.getloadavg())
    doc["summary"] = summary(doc)
    _save(doc, out, name)
    log(markdown(doc))
    for k, v in doc["summary"].items():
        log(f"{k}:")
        for line in v:
            log(f"  {line}")
    log(f"total {doc['seconds']:.0f} s; wrote {out / (name + '.json')} and {out / (name + '.md')}")
    return 0


def merge(args, argv) -> int:
    """One report from runs that measured different families (e.g. run on separate occasions)."""
    docs = [json.loads(Path(p).read_text()) for p in args.merge]
    found: dict[str, Any] = {}
    for d in docs:
        found.update(d["families"])
    base = dict(docs[0])
    for key in ("test_images", "threads", "runs", "warmup", "train", "quick"):
        values = {json.dumps(d.get(key), sort_keys=True) for d in docs}
        if len(values) > 1:
            raise ValueError(f"cannot merge runs with different {key}: {sorted(values)}")
    base["families"] = {fam: found[fam] for fam in FAMILIES if fam in found}
    base["merged_from"] = [{"file": p, "command": d["fingerprint"]["command"], "date": d["fingerprint"]["date"],
                            "seconds": d.get("seconds"), "families": list(d["families"]),
                            "loadavg_start": d["fingerprint"].get("loadavg_start"),
                            "loadavg_end": d["fingerprint"].get("loadavg_end")} for p, d in zip(args.merge, docs)]
    base["fingerprint"] = dict(base["fingerprint"], merge_command=fingerprint(["bench/quantization.py", *argv])["command"])
    et = Path(args.out) / "export_time.json"
    if et.is_file():
        base["export_time"] = {k: v for k, v in json.loads(et.read_text()).items() if k != "fingerprint"}
        base["export_time"]["fingerprint"] = json.loads(et.read_text()).get("fingerprint")
    base["summary"] = summary(base)
    _save(base, Path(args.out), "quantization")
    log(markdown(base))
    for k, v in base["summary"].items():
        log(f"{k}:")
        for line in v:
            log(f"  {line}")
    return 0


def _save(doc: dict[str, Any], out: Path, name: str) -> None:
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(markdown(doc))


if __name__ == "__main__":
    sys.exit(main())
