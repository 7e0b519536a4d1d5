"""Device runners: is a latency repeatable, and does measuring over SSH change it?

One small variant per family (64x64, 1 channel, 10 classes, random weights), fp32 and int8, ONNX
and TFLite, each measured locally and over SSH to a throwaway sshd on 127.0.0.1 (started like the
tests do), three repetitions interleaved in one run. Reported per file: the median of each
repetition, the CV of those medians (target <= 2 %) and the SSH median against the local one
(target within 3 %). Writes bench/results/devices.json and devices.md.

    .venv/bin/python bench/devices.py            # every family (about 10-15 min on 2 cores)
    .venv/bin/python bench/devices.py --quick    # two families
    .venv/bin/python bench/devices.py --families "ESPNet v1" --out bench/results/devices-espnet-v1
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.devices.base import open_model  # noqa: E402
from edgekit.devices.local import LocalDevice  # noqa: E402
from edgekit.devices.measure import real_inputs  # noqa: E402
from edgekit.devices.ssh import SSHDevice  # noqa: E402
from edgekit.devices.sshd import LocalSSHD  # noqa: E402
from edgekit.devices.stats import Protocol  # noqa: E402
from edgekit.export import ExportSettings, export  # noqa: E402
from edgekit.models import create_model  # noqa: E402

OUT = ROOT / "bench" / "out" / "devices"
RESULTS = ROOT / "bench" / "results"
FAMILIES = {"ESPNet v1": "espnet_v1_c", "ESPNet v2": "espnetv2_0_5", "FBNet v1": "fbnet_a", "FBNet v2": "fbnetv2_f1",
            "FBNet v3": "fbnetv3_a", "EfficientNet": "efficientnet_b0", "GhostNet v1": "ghostnet_0_5",
            "GhostNet v2": "ghostnetv2_1_0"}
QUICK = ("FBNet v1", "GhostNet v1")
CV_TARGET, SSH_TARGET = 0.02, 0.03


def artifacts(variant: str) -> list[Path]:
    """The four files of ``variant`` at 64x64 (exported once, reused from bench/out)."""
    out = OUT / variant
    files = sorted(out.glob(f"{variant}-*.onnx")) + sorted(out.glob(f"{variant}-*.tflite"))
    if len(files) == 4:
        return files
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model(variant, num_classes=10, in_chans=1, resolution=64)
    done = export(model, name=variant, out=out, settings=ExportSettings(calib_samples=64, holdout=32, force=True))
    return [f.artifact.path for f in done]


def measure_file(path: Path, devices: dict, protocol: Protocol, reps: int) -> dict:
    model = open_model(path)
    x, _ = real_inputs(model, data="fashion-mnist", samples=1)
    medians: dict[str, list[float]] = {name: [] for name in devices}
    fingerprint = {}
    for _ in range(reps):  # interleaved, so both devices see the same machine load
        for name, dev in devices.items():
            r = dev.run(model, [x], protocol=protocol)
            medians[name].append(r.stats.median_ms)
            fingerprint = {k: r.fingerprint.get(k) for k in ("runtime", "runtime_version", "cpu_model", "pinned_cores")}
    row = {"file": path.name, "model": model.name, "format": model.format, "precision": model.precision,
           "medians_ms": medians, "fingerprint": fingerprint}
    for name, ms in medians.items():
        row[f"{name}_median_ms"] = statistics.median(ms)
        row[f"{name}_cv_of_medians"] = statistics.stdev(ms) / statistics.mean(ms) if len(ms) > 1 else 0.0
    row["ssh_vs_local"] = row["ssh_median_ms"] / row["local_median_ms"] - 1
    return row


def markdown(doc: dict) -> str:
    lines = ["# Device runners: repeatability and SSH vs local", "",
             f"{doc['date']}, {doc['machine']}; {doc['protocol']['runs']}+ timed runs per measurement, "
             f"{doc['repetitions']} repetitions, 1 thread pinned to one core. Load average at start "
             f"{doc['load_average_start']}, at end {doc['load_average_end']}.", "",
             f"Targets: CV of the repeated medians <= {100 * CV_TARGET:.0f} %; SSH median within "
             f"{100 * SSH_TARGET:.0f} % of local.", "",
             "| file | local median ms | CV of medians (local) | ssh median ms | CV of medians (ssh) | ssh vs local |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | export failed: {r['error'][:80]} | | | | |")
            continue
        lines.append(f"| {r['file']} | {r['local_median_ms']:.3f} | {100 * r['local_cv_of_medians']:.1f} % | "
                     f"{r['ssh_median_ms']:.3f} | {100 * r['ssh_cv_of_medians']:.1f} % | {100 * r['ssh_vs_local']:+.1f} % |")
    s = doc["summary"]
    lines += ["", f"Within the CV target: {s['cv_ok']} of {s['measured']} (local and ssh both); SSH within "
                  f"{100 * SSH_TARGET:.0f} %: {s['ssh_ok']} of {s['measured']}; worst CV {100 * s['worst_cv']:.1f} %, "
                  f"worst |ssh - local| {100 * s['worst_ssh']:.1f} %.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--families", help=f"comma list of {', '.join(FAMILIES)} (default: all)")
    ap.add_argument("--out", default=str(RESULTS / "devices"), help="results path without suffix (.json and .md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    families = QUICK if args.quick else tuple(FAMILIES)
    if args.families:
        families = tuple(f.strip() for f in args.families.split(","))
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            ap.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    protocol = Protocol(runs=args.runs, warmup=20, max_runs=4 * args.runs)
    start = time.time()
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp, LocalSSHD(Path(tmp) / "sshd") as srv:
        ssh = SSHDevice(srv.address, ssh_options=srv.ssh_options, python=sys.executable, cache_dir=f"{tmp}/cache")
        devices = {"local": LocalDevice(), "ssh": ssh}
        for fam in families:
            variant = FAMILIES[fam]
            try:
                files = artifacts(variant)
            except ValueError as e:  # a converter refusing this variant at 64x64: reported, not hidden
                rows.append({"family": fam, "model": variant, "error": str(e)})
                continue
            for path in files:
                row = {"family": fam, **measure_file(path, devices, protocol, args.reps)}
                rows.append(row)
                print(f"{row['file']:<40} local {row['local_median_ms']:.3f} ms (CV {100 * row['local_cv_of_medians']:.1f} %)"
                      f"  ssh {row['ssh_median_ms']:.3f} ms (CV {100 * row['ssh_cv_of_medians']:.1f} %)"
                      f"  ssh vs local {100 * row['ssh_vs_local']:+.1f} %", flush=True)
        ssh.close()
    measured = [r for r in rows if "error" not in r]
    summary = {"measured": len(measured),
               "cv_ok": sum(r["local_cv_of_medians"] <= CV_TARGET and r["ssh_cv_of_medians"] <= CV_TARGET for r in measured),
               "ssh_ok": sum(abs(r["ssh_vs_local"]) <= SSH_TARGET for r in measured),
               "worst_cv": max((max(r["local_cv_of_medians"], r["ssh_cv_of_medians"]) for r in measured), default=0.0),
               "worst_ssh": max((abs(r["ssh_vs_local"]) for r in measured), default=0.0)}
    doc = {"benchmark": "devices", "quick": args.quick, "families": list(families),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}",
           "command": " ".join(["bench/devices.py", *(argv if argv is not None else sys.argv[1:])]),
           "protocol": protocol.to_dict(), "repetitions": args.reps, "resolution": 64, "in_chans": 1,
           "num_classes": 10, "weights": "random (seed 0)", "load_average_start": load_start,
           "load_average_end": [round(v, 2) for v in os.getloadavg()], "seconds": round(time.time() - start, 1),
           "targets": {"cv_of_medians": CV_TARGET, "ssh_vs_local": SSH_TARGET}, "summary": summary, "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
