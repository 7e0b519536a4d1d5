"""The ``edgekit`` command: parses arguments, calls the Python API, prints a table or ``--json``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

from .models import get_cfg, list_models, profile_name
from .models.profile import human

__all__ = ["main"]


def _models_rows(pattern: str | None) -> list[dict]:
    rows = []
    for name in list_models(pattern):
        cfg = get_cfg(name)
        prof = profile_name(name)
        rows.append({"name": name, "family": cfg.family, "task": cfg.task, "params": prof.params,
                     "macs": prof.macs, "resolution": list(cfg.resolution), "num_classes": cfg.num_classes,
                     "paper": cfg.paper})
    return rows


def cmd_models(args: argparse.Namespace, out: Console) -> int:
    rows = _models_rows(args.pattern)
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    table = Table(title=f"edgekit model zoo ({len(rows)} variants; MACs = conv + linear multiply-adds)")
    for col, justify in (("name", "left"), ("family", "left"), ("params", "right"), ("MACs", "right"),
                         ("resolution", "right"), ("classes", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        h, w = r["resolution"]
        table.add_row(r["name"], r["family"], human(r["params"]), human(r["macs"]),
                      f"{h}" if h == w else f"{h}x{w}", str(r["num_classes"]))
    out.print(table)
    return 0


def cmd_info(args: argparse.Namespace, out: Console) -> int:
    cfg = get_cfg(args.name)
    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("in_chans", args.in_chans),
                                   ("resolution", args.resolution), ("width", args.width)) if v is not None}
    prof = profile_name(args.name, **overrides)
    doc = {"config": cfg.to_dict(), "overrides": overrides, "profile": prof.to_dict()}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    out.print(f"{cfg.name}  ({cfg.family}, {cfg.task})  {cfg.paper}", markup=False, highlight=False)
    c, h, w = prof.input_shape[1:]
    out.print(f"input {c}x{h}x{w}  mean {list(cfg.mean)}  std {list(cfg.std)}  layout {cfg.layout}",
              markup=False, highlight=False)
    if cfg.notes:
        out.print(cfg.notes, markup=False, highlight=False)
    table = Table(title=f"{human(prof.params)} params, {human(prof.macs)} MACs")
    for col, justify in (("stage", "left"), ("output", "right"), ("params", "right"), ("MACs", "right"),
                         ("% MACs", "right")):
        table.add_column(col, justify=justify)
    for s in prof.stages:
        share = 100 * s.macs / prof.macs if prof.macs else 0.0
        table.add_row(s.name, "x".join(map(str, s.out_shape[1:])), human(s.params), human(s.macs), f"{share:.1f}")
    out.print(table)
    return 0


def cmd_train(args: argparse.Namespace, out: Console) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, limit=args.limit, seed=args.seed)

    def progress(rec: dict) -> None:
        if not args.json:
            out.print(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}  test top-1 {100 * rec['top1']:.2f} %  "
                      f"({rec['seconds']:.0f} s)", highlight=False)

    result = train(args.model, data=args.data, out=args.out, config=config, in_chans=args.in_chans,
                   resolution=args.resolution, progress=progress)
    if args.json:
        print(json.dumps({"weights": str(result.weights), "top1": result.top1, "epochs": result.epochs,
                          "seconds": result.seconds, "history": list(result.history)}, indent=2))
    else:
        out.print(f"saved {result.weights} (test top-1 {100 * result.top1:.2f} %)", highlight=False)
    return 0


def _export_model(args: argparse.Namespace):
    """(model, name, weights path, weights sha) for `edgekit export` from its arguments."""
    from .models import ArchSpec, create_model
    from .train import build_model, load_weights

    if args.weights:
        model, meta, sha = load_weights(args.weights)
        trained_as = meta.get("model") or (meta.get("arch") or {}).get("name")
        if args.model != trained_as:
            raise ValueError(f"{args.weights} holds weights of {trained_as!r}, not {args.model!r}")
        return model, args.model, args.weights, sha
    if args.arch:
        spec = ArchSpec.from_json(open(args.arch).read())
        side = args.resolution or spec.resolution
        model = build_model(arch=spec, num_classes=args.num_classes or 1000, in_chans=args.in_chans or 3,
                            resolution=side)
        return model, spec.name, None, None
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, resolution=args.resolution)
    return model, args.model, None, None


def cmd_export(args: argparse.Namespace, out: Console) -> int:
    from .export import ExportSettings, export

    source, samples = args.calib, args.calib_samples
    if ":" in source and source.split(":")[0] == "fashion-mnist":
        source, n = source.split(":", 1)
        samples = int(n)
    settings = ExportSettings(formats=tuple(args.format.split(",")), precisions=tuple(args.precision.split(",")),
                              calib=source, calib_samples=samples, calib_method=args.calib_method,
                              synthetic=args.synthetic_calib, io_dtype=args.io_dtype, force=args.force)
    model, name, weights, sha = _export_model(args)
    files = export(model, name=name, out=args.out, settings=settings, weights_file=weights, weights_sha256=sha)
    if args.json:
        print(json.dumps({"artifacts": [{"path": str(f.artifact.path), "manifest": str(f.artifact.manifest_path),
                                         "format": f.artifact.manifest.format,
                                         "precision": f.artifact.manifest.precision, "size_bytes": f.size_bytes,
                                         "parity": f.parity.to_dict(), "notes": list(f.notes)} for f in files]},
                         indent=2))
        return 0
    if settings.synthetic:
        out.print("WARNING: int8 ranges calibrated on synthetic data, not real images", style="yellow")
    table = Table(title=f"{name}: exported and checked against PyTorch on {settings.holdout} held-out images")
    for col in ("file", "format", "precision", "size", "SQNR dB", "cosine", "top-1 agree"):
        table.add_column(col, justify="left" if col in ("file", "format", "precision") else "right")
    for f in files:
        m, p = f.artifact.manifest, f.parity
        agree = "-" if p.top1_agreement is None else f"{100 * p.top1_agreement:.1f} %"
        table.add_row(f.artifact.path.name, m.format, m.precision, human(f.size_bytes) + "B", f"{p.sqnr_db:.1f}",
                      f"{p.cosine:.5f}", agree)
    out.print(table)
    for f in files:
        for note in f.notes:
            out.print(f"note ({f.artifact.path.name}): {note}", markup=False, highlight=False)
    return 0


def cmd_validate(args: argparse.Namespace, out: Console) -> int:
    from .validate import validate

    report = validate(args.artifact, data=args.data, limit=args.limit, weights=args.weights, threads=args.threads)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    line = f"{report.artifact}: top-1 {100 * report.top1:.2f} % on {report.n} {report.dataset} test images"
    if report.torch_top1 is not None:
        line += (f"; PyTorch {100 * report.torch_top1:.2f} % (drop {100 * report.drop:+.2f} points); "
                 f"{report.parity.format()}")
    else:
        line += "; no PyTorch weights recorded, so no reference accuracy"
    out.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def _resolution(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {text!r} must be N or HxW, e.g. 224 or 512x1024") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"resolution {text!r} must be N or HxW, e.g. 224 or 512x1024")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Lightweight CNNs from reference "
                                     "definition to int8 file on the device.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list every registered variant with params and MACs")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'ghostnet*'")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("info", help="one model's configuration and per-stage summary")
    p.add_argument("name")
    p.add_argument("--resolution", type=_resolution, help="N or HxW")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--width", type=float)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("export", help="export a model to ONNX / TFLite, fp32 / int8, checked against PyTorch")
    p.add_argument("model")
    p.add_argument("--format", default="onnx,tflite", help="comma list of onnx, tflite")
    p.add_argument("--precision", default="fp32,int8", help="comma list of fp32, int8")
    p.add_argument("--out", required=True, help="existing output directory")
    p.add_argument("--weights", help="weights file from `edgekit train` (sets classes, channels, resolution)")
    p.add_argument("--arch", help="ArchSpec JSON to build instead of a zoo model")
    p.add_argument("--resolution", type=_resolution)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--calib", default="fashion-mnist", help="fashion-mnist[:N], a directory, or FILE.npy")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--calib-method", default="minmax", help="minmax, percentile, entropy or mse")
    p.add_argument("--synthetic-calib", action="store_true", help="calibrate on random data (flagged everywhere)")
    p.add_argument("--io-dtype", default="int8", choices=("int8", "float32"), help="TFLite int8 file inputs/outputs")
    p.add_argument("--force", action="store_true", help="write int8 files below the SQNR floor too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("validate", help="top-1 of an exported file and of its PyTorch source on real data")
    p.add_argument("artifact")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, help="first N test images only")
    p.add_argument("--weights", help="PyTorch weights (default: the file named in the manifest)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("train", help="train a zoo model on a labelled dataset (Fashion-MNIST by default)")
    p.add_argument("model")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist[:N], a directory of IDX files or class folders")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", required=True, help="weights file to write (.pt)")
    p.add_argument("--in-chans", type=int, default=1, choices=(1, 3))
    p.add_argument("--resolution", type=int, help="input side (default: 32, or the model's minimum)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit", type=int, help="train on the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        return args.func(args, Console())
    except ValueError as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
