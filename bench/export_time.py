"""Wall time of ``edgekit.export.export`` producing all four files (ONNX / TFLite x fp32 / int8) of
ghostnet_1_0 at 224x224 (1000 classes, 3 channels, fresh weights) with default settings.

Run it in a fresh interpreter (bench/quantization.py does): the TFLite exporter keeps converted
graphs in memory, so a second export in the same process would be timed against a warm cache.

    .venv/bin/python bench/export_time.py [--model ghostnet_1_0] [--resolution 224] [--out FILE.json]
    .venv/bin/python bench/export_time.py --sequential --out bench/results/export_time_sequential.json
    .venv/bin/python bench/export_time.py --repeat 5     # five fresh processes; the median run on top
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

T_PROCESS = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import RESULTS, fingerprint, first_line, write_json  # noqa: E402


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(model_name: str, resolution: int, sequential: bool = False) -> dict:
    from edgekit._background import usable_cpus
    from edgekit.export import ExportSettings, converts_in_parallel, export
    from edgekit.models import create_model
    t_import = time.perf_counter() - T_PROCESS
    torch.manual_seed(0)
    model = create_model(model_name, resolution=resolution).eval()
    settings = ExportSettings(parallel=False if sequential else None)
    doc = {"model": model_name, "resolution": resolution, "input_size": list(model.default_cfg["input_size"]),
           "num_classes": model.default_cfg.get("num_classes"), "weights": "fresh (torch.manual_seed(0))",
           "settings": {"formats": settings.formats, "precisions": settings.precisions, "calib": settings.calib,
                        "calib_samples": settings.calib_samples, "calib_method": settings.calib_method,
                        "holdout": settings.holdout}, "import_seconds": round(t_import, 1)}
    with tempfile.TemporaryDirectory(prefix="edgekit-export-time-") as out:
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        load0 = list(os.getloadavg())
        try:
            files = export(model, name=model_name, out=out, settings=settings)
        except Exception as e:  # recorded with the time it took to fail
            doc.update(error=first_line(e), failed_after_seconds=round(time.perf_counter() - t0, 1))
            return doc
        doc["export_seconds"] = round(time.perf_counter() - t0, 2)
        # CPU seconds of this process (all its threads) and of the worker that converts the TFLite
        # files: on a shared machine the wall time above includes waiting for a core; this is what the
        # export costs when it has the cores to itself
        doc["export_cpu_seconds"] = round(time.process_time() - c0 + _children_cpu() - k0, 2)
        doc["parallel"] = converts_in_parallel(settings, torch.zeros(1, *model.default_cfg["input_size"]))
        doc["usable_cpus"] = usable_cpus()
        doc["loadavg_during"] = [load0, list(os.getloadavg())]
        doc["files"] = {f"{f.artifact.manifest.format}-{f.artifact.manifest.precision}":
                        {"size_bytes": f.size_bytes, "sqnr_db": f.parity.sqnr_db} for f in files}
    doc["process_seconds_to_here"] = round(time.perf_counter() - T_PROCESS, 1)
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ghostnet_1_0")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--out", default=str(RESULTS / "export_time.json"))
    p.add_argument("--sequential", action="store_true", help="everything in this process (no TFLite worker)")
    p.add_argument("--repeat", type=int, default=1,
                   help="export N times, each in a fresh process, one after the other; the result keeps every "
                        "run and reports the median (this machine's wall times vary by 10-15 %% run to run)")
    args = p.parse_args(argv)
    command = ["bench/export_time.py", *(sys.argv[1:] if argv is None else argv)]
    if args.repeat > 1:
        doc = _repeated(args)
    else:
        doc = measure(args.model, args.resolution, args.sequential)
    doc["fingerprint"] = fingerprint(command)
    write_json(Path(args.out), doc)
    print(f"{args.model} at {args.resolution}: " + (f"{doc['export_seconds']:.1f} s for {len(doc['files'])} files"
                                                    + (f" (median of {args.repeat} runs)" if args.repeat > 1 else "")
                                                    if "export_seconds" in doc else f"failed: {doc['error']}"))
    return 0 if "export_seconds" in doc else 1


def _repeated(args) -> dict:
    """``args.repeat`` runs of this script in fresh processes; the median run's fields on top."""
    import json
    import statistics
    import subprocess
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgekit-export-time-") as tmp:
        for i in range(args.repeat):
            out = Path(tmp, f"run{i}.json")
            cmd = [sys.executable, __file__, "--model", args.model, "--resolution", str(args.resolution),
                   "--out", str(out), *(["--sequential"] if args.sequential else [])]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if not out.is_file():
                raise SystemExit(f"run {i + 1} wrote no result (exit {done.returncode}): {done.stderr[-500:]}")
            runs.append(json.loads(out.read_text()))
            print(f"run {i + 1}: {done.stdout.strip()}", flush=True)
    seconds = [r["export_seconds"] for r in runs if "export_seconds" in r]
    if not seconds:
        return {**runs[-1], "runs": runs}
    median = statistics.median_low(seconds)
    doc = dict(next(r for r in runs if r.get("export_seconds") == median))
    doc.pop("fingerprint", None)
    doc.update(runs=[{k: r.get(k) for k in ("export_seconds", "export_cpu_seconds", "loadavg_during", "error")}
                     for r in runs], export_seconds_all=seconds, export_seconds_median=median)
    return doc


if __name__ == "__main__":
    sys.exit(main())
