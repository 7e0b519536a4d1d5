"""TFLite int8 against fp32 speed of one model at several input sizes (random weights, 1 thread).

Does a model's int8 speed-up grow with the input? For each side: ``edgekit.export.export`` writes
the TFLite fp32 and int8 files (Fashion-MNIST calibration, 1 channel, 10 classes), then both are
timed alternately on one pinned core (``bench/quantization.py``'s ``paired_latency``).

    .venv/bin/python bench/int8_speed.py --model espnetv2_1_0 --sides 32,64,128
    .venv/bin/python bench/int8_speed.py --model espnetv2_1_0 --sides 64 --prelu-as-relu

``--prelu-as-relu`` swaps every PReLU module for a ReLU first: what the speed-up would be if PReLU
cost nothing extra in int8. Writes bench/results/int8_speed-<model>[-relu].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import RESULTS, captured, fingerprint, write_json  # noqa: E402
from bench.quantization import paired_latency  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="espnetv2_1_0")
    p.add_argument("--sides", default="32,64,128")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--prelu-as-relu", action="store_true", help="replace every PReLU by a ReLU before export")
    args = p.parse_args(argv)
    from edgekit.calibration.data import calibration_batch, preprocessing_for
    from edgekit.export import ExportSettings, export
    from edgekit.models import create_model
    doc = {"fingerprint": fingerprint(["bench/int8_speed.py", *argv]), "model": args.model, "sides": {}}
    for side in (int(v) for v in args.sides.split(",")):
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10, in_chans=1, resolution=side)
        if args.prelu_as_relu:
            _prelu_as_relu(model)
        with tempfile.TemporaryDirectory() as tmp, captured():
            files = export(model, name=args.model, out=tmp, settings=ExportSettings(
                formats=("tflite",), calib_samples=64, holdout=32, force=True))
            by = {f.artifact.manifest.precision: f for f in files}
            x0 = calibration_batch("fashion-mnist", preprocessing_for(model.default_cfg), samples=1, seed=1,
                                   split="test")
            manifests = tuple(json.loads(Path(by[k].artifact.manifest_path).read_text()) for k in ("fp32", "int8"))
            lat = paired_latency(by["fp32"].artifact.path, by["int8"].artifact.path, manifests, x0, threads=1,
                                 runs=args.runs, warmup=args.warmup)
        doc["sides"][side] = lat
        print(f"{args.model} at {side}x{side}: fp32 {lat['fp32']['median_ms']:.3f} ms, int8 "
              f"{lat['int8']['median_ms']:.3f} ms, speed-up {lat['speedup']:.2f}x", flush=True)
    write_json(RESULTS / f"int8_speed-{args.model}{'-relu' if args.prelu_as_relu else ''}.json", doc)
    return 0


def _prelu_as_relu(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.PReLU):
            setattr(module, name, torch.nn.ReLU())
        else:
            _prelu_as_relu(child)


if __name__ == "__main__":
    sys.exit(main())
