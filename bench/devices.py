"""Device runners: is a latency repeatable, and does measuring over SSH change it?

One small variant per family (64x64, 1 channel, 10 classes, random weights), fp32 and int8, ONNX
and TFLite, each measured locally and over SSH to a throwaway sshd on 127.0.0.1 (started like the
tests do), three repetitions interleaved in one run, every measurement timed in blocks with sleeps
between them (``--blocks``, ``--gap-ms``). Reported per file, for the median and for the fastest
run of each repetition: the CV of the three figures (target <= 2 %) and the SSH figure against the
local one (target within 3 %). Writes bench/results/devices.json and devices.md (or ``--out``).

    .venv/bin/python bench/devices.py            # every family (about 15 min on 2 cores)
    .venv/bin/python bench/devices.py --quick    # two families
    .venv/bin/python bench/devices.py --families "ESPNet v1" --out /tmp/devices-espnet-v1   # one family
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
STATS = ("median", "min")


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
    """Both statistics of every repetition: the median and the fastest run (``min``)."""
    model = open_model(path)
    x, _ = real_inputs(model, data="fashion-mnist", samples=1)
    figures: dict[str, dict[str, list[float]]] = {stat: {name: [] for name in devices} for stat in STATS}
    fingerprint = {}
    for _ in range(reps):  # interleaved, so both devices see the same machine load
        for name, dev in devices.items():
            r = dev.run(model, [x], protocol=protocol)
            for stat in STATS:
                figures[stat][name].append(getattr(r.stats, f"{stat}_ms"))
            fingerprint = {k: r.fingerprint.get(k) for k in ("runtime", "runtime_version", "cpu_model", "pinned_cores")}
    row = {"file": path.name, "model": model.name, "format": model.format, "precision": model.precision,
           "fingerprint": fingerprint}
    for stat, per_device in figures.items():
        row[f"{stat}s_ms"] = per_device
        for name, ms in per_device.items():
            row[f"{name}_{stat}_ms"] = statistics.median(ms)
            row[f"{name}_cv_of_{stat}s"] = statistics.stdev(ms) / statistics.mean(ms) if len(ms) > 1 else 0.0
        row[f"ssh_vs_local_{stat}"] = row[f"ssh_{stat}_ms"] / row[f"local_{stat}_ms"] - 1
    return row


def summarize_rows(rows: list[dict], stat: str) -> dict:
    measured = [r for r in rows if "error" not in r]
    cvs = [max(r[f"local_cv_of_{stat}s"], r[f"ssh_cv_of_{stat}s"]) for r in measured]
    ssh = [abs(r[f"ssh_vs_local_{stat}"]) for r in measured]
    return {"measured": len(measured), "cv_ok": sum(c <= CV_TARGET for c in cvs),
            "ssh_ok": sum(d <= SSH_TARGET for d in ssh), "worst_cv": max(cvs, default=0.0),
            "worst_ssh": max(ssh, default=0.0)}


def markdown(doc: dict) -> str:
    p = doc["protocol"]
    spread = (f"in {p['blocks']} blocks with {p['gap_ms']:g} ms sleeps between them" if p["blocks"] > 1
              else "back to back")
    lines = ["# Device runners: repeatability and SSH vs local", "",
             f"{doc['date']}, {doc['machine']}; {p['runs']}+ timed runs per measurement {spread}, "
             f"{doc['repetitions']} repetitions, 1 thread pinned to one core. Load average at start "
             f"{doc['load_average_start']}, at end {doc['load_average_end']}. Command: `{doc['command']}`.", "",
             f"Targets: CV of the repeated figures <= {100 * CV_TARGET:.0f} %; SSH within "
             f"{100 * SSH_TARGET:.0f} % of local. Each row gives both statistics of every measurement: the median "
             f"and the fastest run (min).", "",
             "| file | local median ms | CV (local, ssh) | ssh vs local | local min ms | CV (local, ssh) | ssh vs local |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | export failed: {r['error'][:80]} | | | | | |")
            continue
        cells = [r["file"]]
        for stat in STATS:
            cells += [f"{r[f'local_{stat}_ms']:.3f}",
                      f"{100 * r[f'local_cv_of_{stat}s']:.1f} %, {100 * r[f'ssh_cv_of_{stat}s']:.1f} %",
                      f"{100 * r[f'ssh_vs_local_{stat}']:+.1f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for stat in STATS:
        s = doc["summary"][stat]
        lines.append(f"{stat}: within the CV target {s['cv_ok']} of {s['measured']} (local and ssh both); SSH "
                     f"within {100 * SSH_TARGET:.0f} %: {s['ssh_ok']} of {s['measured']}; worst CV "
                     f"{100 * s['worst_cv']:.1f} %, worst |ssh - local| {100 * s['worst_ssh']:.1f} %.")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--blocks", type=int, default=20, help="timed runs split into N blocks (the protocol's blocks)")
    ap.add_argument("--gap-ms", type=float, default=50.0, help="sleep between blocks")
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
    protocol = Protocol(runs=args.runs, warmup=20, max_runs=2 * args.runs, blocks=args.blocks, gap_ms=args.gap_ms)
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
                print(f"{row['file']:<40}" + "".join(
                    f"  {stat} local {row[f'local_{stat}_ms']:.3f} ms (CV {100 * row[f'local_cv_of_{stat}s']:.1f} %)"
                    f" ssh {100 * row[f'ssh_vs_local_{stat}']:+.1f} %" for stat in STATS), flush=True)
        ssh.close()
    summary = {stat: summarize_rows(rows, stat) for stat in STATS}
    doc = {"benchmark": "devices", "quick": args.quick, "families": list(families),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}",
           "command": " ".join(["bench/devices.py", *(argv if argv is not None else sys.argv[1:])]),
           "protocol": protocol.to_dict(), "repetitions": args.reps, "resolution": 64, "in_chans": 1,
           "num_classes": 10, "weights": "random (seed 0)", "load_average_start": load_start,
           "load_average_end": [round(v, 2) for v in os.getloadavg()], "seconds": round(time.time() - start, 1),
           "targets": {"cv_of_repeated_figures": CV_TARGET, "ssh_vs_local": SSH_TARGET}, "summary": summary,
           "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
