"""timm checkpoints through edgekit: for each of the 32 mapped timm names, a checkpoint of seeded
weights (no published checkpoint is reachable from this machine; ``tests/seeded.py``'s values:
fan-in-scaled weights, BN statistics near identity) is

1. loaded by ``timm:NAME`` and its fp32 logits compared with timm's own on the same weights and
   input (``tests/data/timm/logits.npz``, made with timm by ``tests/data/timm/make_fixtures.py``);
2. exported by the CLI as a user would, ``edgekit export timm:NAME --weights CK --resolution R
   --precision int8`` (ONNX and TFLite, each in a fresh process, timed), and each int8 file's parity
   with PyTorch on the 256 held-out Fashion-MNIST images (timm's preprocessing: replicated to three
   channels, resized and centre-cropped as timm's configuration says) recorded.

    .venv/bin/python bench/timm.py [--resolution 128] [--names ghostnet_100,efficientnet_b0]
    .venv/bin/python bench/timm.py --names NAME,... --no-export --append   # fp32 check only, into the same table

Results: bench/results/timm.json and timm.md. Exports are at one side for all (128 px by default,
not each checkpoint's own 224-600 px) so the 32 exports fit in about an hour here.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import seeded  # noqa: E402
from bench._common import RESULTS, fingerprint, write_json  # noqa: E402
from edgekit.models.pretrained import TIMM, load_timm  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "timm"


def checkpoint(keys: list, path: Path) -> None:
    from safetensors.torch import save_file
    shapes = {k: tuple(s) for k, s, _ in keys}
    values = seeded.state(shapes)
    save_file({k: torch.from_numpy(values[k]) if k in values else torch.tensor(0) for k in sorted(shapes)}, path)


def fp32_check(name: str, ckpt: Path, reference: np.ndarray) -> dict:
    t0 = time.perf_counter()
    model, _ = load_timm(f"timm:{name}", ckpt)
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        out = model(torch.from_numpy(seeded.image((1, 3, 64, 64)))).numpy()
    return {"load_seconds": round(load_s, 2), "fp32_max_abs_diff": float(np.abs(out - reference).max()),
            "timm_logits_max_abs": float(np.abs(reference).max())}


def export(name: str, ckpt: Path, fmt: str, resolution: int, out: Path) -> dict:
    cmd = [str(ROOT / ".venv" / "bin" / "edgekit"), "export", f"timm:{name}", "--weights", str(ckpt),
           "--resolution", str(resolution), "--format", fmt, "--precision", "int8", "--out", str(out), "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[0][:300], "seconds": round(seconds, 1)}
    (art,) = json.loads(done.stdout)["artifacts"]
    p = art["parity"]
    return {"seconds": round(seconds, 1), "size_bytes": art["size_bytes"], "sqnr_db": p["sqnr_db"],
            "top1_agreement": p["top1_agreement"], "top5_agreement": p.get("top5_agreement"),
            "notes": art["notes"]}


def table(rows: list[dict], resolution: int) -> str:
    lines = ["| timm name | zoo network | fp32 max abs diff vs timm | ONNX int8: export s, SQNR dB, top-1 agree | "
             "TFLite int8: export s, SQNR dB, top-1 agree |", "|---|---|---:|---:|---:|"]

    def cell(r: dict) -> str:
        if r.get("error", "").startswith("not exported"):
            return "not exported in this run"
        if "error" in r:
            return f"failed: {r['error'][:80]}"
        return f"{r['seconds']:.0f} s, {r['sqnr_db']:.1f}, {100 * r['top1_agreement']:.1f} %"
    for r in rows:
        lines.append(f"| {r['name']} | {r['zoo']} | {r['fp32_max_abs_diff']:.1e} | {cell(r['onnx'])} | "
                     f"{cell(r['tflite'])} |")
    return "\n".join(lines) + f"\n\nint8 exports at {resolution}x{resolution}, seeded weights (not trained).\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--names", help="comma list (default: all 32)")
    ap.add_argument("--no-export", action="store_true", help="only load each checkpoint and compare fp32 logits")
    ap.add_argument("--append", action="store_true", help="add to (or replace names in) the existing timm.json")
    args = ap.parse_args()
    names = args.names.split(",") if args.names else list(TIMM)
    with gzip.open(FIXTURES / "architectures.json.gz", "rt") as f:
        archs = json.load(f)["architectures"]
    logits = np.load(FIXTURES / "logits.npz")
    doc = {"fingerprint": fingerprint(sys.argv), "resolution": args.resolution,
           "weights": "seeded (tests/seeded.py), not a published checkpoint", "results": []}
    if args.append and (RESULTS / "timm.json").exists():
        before = json.loads((RESULTS / "timm.json").read_text())
        doc["results"] = [r for r in before["results"] if r["name"] not in names]
        doc["earlier_runs"] = [before["fingerprint"], *before.get("earlier_runs", [])]
    with tempfile.TemporaryDirectory(prefix="edgekit-timm-") as tmp:
        for name in names:
            ckpt = Path(tmp) / f"{name}.safetensors"
            checkpoint(archs[name]["keys"], ckpt)
            row = {"name": name, "zoo": TIMM[name].zoo, **fp32_check(name, ckpt, logits[name])}
            for fmt in ("onnx", "tflite"):
                out = Path(tmp) / f"{name}-{fmt}"
                out.mkdir()
                row[fmt] = ({"error": "not exported in this run (--no-export)"} if args.no_export else
                            export(name, ckpt, fmt, args.resolution, out))
            doc["results"].append(row)
            print(json.dumps(row), flush=True)
            ckpt.unlink()
            write_json(RESULTS / "timm.json", doc)
    order = list(TIMM)
    doc["results"].sort(key=lambda r: order.index(r["name"]))
    write_json(RESULTS / "timm.json", doc)
    (RESULTS / "timm.md").write_text(table(doc["results"], args.resolution))
    print(table(doc["results"], args.resolution))


if __name__ == "__main__":
    main()
