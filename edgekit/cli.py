"""The ``edgekit`` command: parses arguments, calls the Python API, prints a table or ``--json``."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
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

    name, arch = args.model, None
    if args.arch:
        if args.init or args.width is not None:
            raise ValueError("--arch builds the network its ArchSpec describes; --init and --width are for zoo and "
                             "timm models")
        arch = _read_arch(args.arch).replace(name=args.model)  # `export NAME --weights` finds it by NAME
        name = None
    result = train(name, arch=arch, data=args.data, out=args.out, config=config, in_chans=args.in_chans,
                   resolution=args.resolution or (arch.resolution if arch else None), width=args.width,
                   init=args.init, progress=progress)
    if args.json:
        print(json.dumps({"weights": str(result.weights), "top1": result.top1, "epochs": result.epochs,
                          "seconds": result.seconds, "history": list(result.history)}, indent=2))
    else:
        out.print(f"saved {result.weights} (test top-1 {100 * result.top1:.2f} %)", highlight=False)
    return 0


def _export_model(args: argparse.Namespace):
    """(model, name, weights path, weights sha, external source) for `edgekit export` from its arguments."""
    from .models import create_model
    from .models.external import describe, is_external, load_external, load_timm_source
    from .models.pretrained import is_timm
    from .train import build_model, load_weights

    external = (args.input_size, args.mean, args.std, args.preset)
    if is_timm(args.model):
        if not args.weights:
            raise ValueError(f"{args.model} needs its checkpoint: --weights FILE (.safetensors, .pth or .pth.tar; "
                             f"edgekit never downloads)")
        if args.arch or args.num_classes or args.in_chans or any(v is not None for v in external):
            raise ValueError(f"{args.model} takes its classes, channels and preprocessing from the checkpoint and "
                             f"timm's configuration; only --resolution may change its input side")
        model, source = load_timm_source(args.model, args.weights, args.resolution)
        return model, args.name or args.model.removeprefix("timm:"), None, None, source
    if is_external(args.model):
        if args.weights or args.arch:
            raise ValueError(f"--weights and --arch are for zoo models; {args.model} builds its own network with its "
                             f"own weights")
        if args.input_size is None:
            raise ValueError(f"{args.model}: give the input size the network takes with --input-size C,H,W "
                             f"(and --mean / --std or --preset)")
        model, source = load_external(args.model)
        name = args.name or Path(args.model.rpartition(":")[2] if ":" in args.model else args.model).stem
        model = describe(model, input_size=args.input_size, mean=args.mean, std=args.std, preset=args.preset,
                         name=args.model)
        return model, name, None, None, source
    if any(v is not None for v in external):
        raise ValueError("--input-size, --mean, --std and --preset describe a network from outside the zoo "
                         "(path/file.py:factory, package.module:factory or a .pt2 program); a zoo model knows its own")
    if args.weights:
        model, meta, sha = load_weights(args.weights)
        trained_as = meta.get("model") or (meta.get("arch") or {}).get("name")
        if args.model != trained_as:
            raise ValueError(f"{args.weights} holds weights of {trained_as!r}, not {args.model!r}")
        return model, args.model, args.weights, sha, None
    if args.arch:
        spec = _read_arch(args.arch)
        side = args.resolution or spec.resolution
        model = build_model(arch=spec, num_classes=args.num_classes or 1000, in_chans=args.in_chans or 3,
                            resolution=side)
        return model, spec.name, None, None, None
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, resolution=args.resolution)
    return model, args.model, None, None, None


def _read_arch(path: str):
    from .models import ArchSpec
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read the ArchSpec {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not an ArchSpec JSON (not text); `nas search --out` writes one") from None
    try:
        return ArchSpec.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an ArchSpec JSON ({e}); `nas search --out` writes one") from None


def cmd_export(args: argparse.Namespace, out: Console) -> int:
    from .export import ExportSettings, export

    source, samples = args.calib, args.calib_samples
    if ":" in source and source.split(":")[0] == "fashion-mnist":
        source, n = source.split(":", 1)
        samples = int(n)
    settings = ExportSettings(formats=tuple(args.format.split(",")), precisions=tuple(args.precision.split(",")),
                              calib=source, calib_samples=samples, calib_method=args.calib_method,
                              calib_retry=tuple(m for m in args.calib_retry.split(",") if m),
                              synthetic=args.synthetic_calib, io_dtype=args.io_dtype, force=args.force,
                              max_drop=args.max_drop, max_float_layers=args.max_float_layers,
                              sensitivity=args.sensitivity is not None,
                              parallel=False if args.sequential else None)
    model, name, weights, sha, source = _export_model(args)
    files = export(model, name=name, out=args.out, settings=settings, weights_file=weights, weights_sha256=sha,
                   source=source)
    if args.json:
        print(json.dumps({"artifacts": [{"path": str(f.artifact.path), "manifest": str(f.artifact.manifest_path),
                                         "format": f.artifact.manifest.format,
                                         "precision": f.artifact.manifest.precision, "size_bytes": f.size_bytes,
                                         "parity": f.parity.to_dict(), "notes": list(f.notes),
                                         "float_layers": list(f.artifact.manifest.float_layers),
                                         **{k: f.artifact.manifest.metrics[k] for k in ("accuracy", "sensitivity")
                                            if k in f.artifact.manifest.metrics}} for f in files]},
                         indent=2))
        return 0
    if settings.synthetic:
        out.print("WARNING: int8 ranges calibrated on synthetic data, not real images", style="yellow")
    table = Table(title=f"{name}: exported and checked against PyTorch on {settings.holdout} held-out images")
    for col in ("file", "format", "precision", "size", "SQNR dB", "cosine", "top-1 agree"):
        table.add_column(col, justify="left" if col in ("file", "format", "precision") else "right",
                         overflow="fold")
    for f in files:
        m, p = f.artifact.manifest, f.parity
        agree = "-" if p.top1_agreement is None else f"{100 * p.top1_agreement:.1f} %"
        sqnr = f"{p.sqnr_db:.1f}" + (" (see note)" if p.warning else "")
        table.add_row(f.artifact.path.name, m.format, m.precision, human(f.size_bytes) + "B", sqnr,
                      f"{p.cosine:.5f}", agree)
    out.print(table)
    for f in files:
        for note in f.notes:
            out.print(f"note ({f.artifact.path.name}): {note}", markup=False, highlight=False)
    _print_fallback(files, args.sensitivity, out)
    return 0


def _print_fallback(files, top: int | None, out: Console) -> None:
    """The top-1 drop behind --max-drop and the --sensitivity table, per int8 / mixed file."""
    from .calibration.sensitivity import format_table

    for f in files:
        m = f.artifact.manifest
        acc, sens = m.metrics.get("accuracy"), m.metrics.get("sensitivity")
        if acc:
            line = (f"{f.artifact.path.name}: top-1 {100 * acc['top1']:.2f} % vs fp32 {100 * acc['fp32_top1']:.2f} % "
                    f"(drop {acc['drop_points']:.2f} points, max {acc['max_drop_points']:g}; int8 alone "
                    f"{acc['int8_drop_points']:.2f}) on {acc['samples']} test images")
            if m.float_layers:
                line += f"; float layers: {', '.join(m.float_layers)}"
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        if sens and top:
            table = Table(title=f"{f.artifact.path.name}: {top} most int8-sensitive of {len(sens['layers'])} layers "
                                f"({sens['samples']} held-out images)")
            for col in ("#", "layer", "op", "SQNR dB, only it int8", "SQNR dB, own output in int8 file"):
                table.add_column(col, justify="left" if col in ("layer", "op") else "right")
            for row in format_table(sens, top):
                table.add_row(*row)
            out.print(table)


def cmd_validate(args: argparse.Namespace, out: Console) -> int:
    from .validate import validate

    report = validate(args.artifact, data=args.data, limit=args.limit, weights=args.weights, threads=args.threads)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    top5 = "" if report.top5 is None else f", top-5 {100 * report.top5:.2f} %"
    line = f"{report.artifact}: top-1 {100 * report.top1:.2f} %{top5} on {report.n} {report.dataset} test images"
    if report.torch_top1 is not None:
        torch_top5 = "" if report.torch_top5 is None else f", top-5 {100 * report.torch_top5:.2f} %"
        line += (f"; PyTorch {100 * report.torch_top1:.2f} %{torch_top5} (drop {100 * report.drop:+.2f} points); "
                 f"{report.parity.format()}")
    else:
        line += "; no PyTorch weights recorded, so no reference accuracy"
    out.print(line, markup=False, highlight=False, soft_wrap=True)
    if report.parity is not None and report.parity.warning:
        out.print(f"warning: {report.parity.warning}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_run(args: argparse.Namespace, out: Console) -> int:
    from .devices.measure import measure
    from .devices.stats import Protocol

    protocol = Protocol(threads=args.threads, warmup=args.warmup, runs=args.runs,
                        max_runs=args.max_runs or max(args.runs, 4 * args.runs), target_cv=args.target_cv,
                        pin=not args.no_pin, blocks=args.blocks, gap_ms=args.gap_ms)
    if args.against:
        return _run_against(args, protocol, out)

    def show(m) -> None:
        _print_run(m, out)
        if m.per_layer is not None:
            _print_per_layer(m.per_layer, out, args.top)

    done = _each_file(args, "runs", show, lambda artifact: measure(
        artifact, device=args.device, protocol=protocol, compare=args.compare, data=args.data,
        per_layer=args.per_layer, samples=args.samples, weights=args.weights, store=not args.no_store,
        input_shapes=args.input_shape, inputs=args.inputs, **_device_options(args)))
    ran = [(path, m) for path, m in zip(args.artifacts, done) if not isinstance(m, FileError)]
    if not args.json and len(args.artifacts) > 1 and ran:
        out.print(_run_table(ran))
    return max((m.code for m in done if isinstance(m, FileError)), default=0)


def _device_options(args: argparse.Namespace) -> dict:
    return {"profile": args.device_profile, "python": args.device_python, "ssh_options": args.ssh_option,
            "cache_dir": args.device_cache, "adb": args.adb, "benchmark_binary": args.benchmark_binary}


@dataclass(frozen=True)
class FileError:
    """Why a file of ``run`` failed and the exit code it calls for (2: the file or an option was
    refused; 3: the device failed)."""

    error: str
    code: int

    def to_dict(self) -> dict:
        return {"error": self.error}


def _each_file(args: argparse.Namespace, key: str, show, work) -> list:
    """``work(artifact)`` for every file of ``run``, each shown as it finishes (or all printed as
    one JSON document: the result, or for several files a list of results and errors). A file
    that fails is printed as a ``FileError`` and the next one runs."""
    from .devices.base import DeviceError

    done = []
    for artifact in args.artifacts:
        try:
            item = work(artifact)
        except (DeviceError, ValueError) as e:
            item = FileError(str(e), 3 if isinstance(e, DeviceError) else 2)
            where = f"{artifact}: " if len(args.artifacts) > 1 else ""
            Console(stderr=True).print(f"error: {where}{e}", style="red", markup=False, highlight=False,
                                       soft_wrap=True)
        done.append(item)
        if not args.json and not isinstance(item, FileError):
            show(item)
    if args.json and (len(done) > 1 or not isinstance(done[0], FileError)):
        docs = [{"file": str(path), **item.to_dict()} for path, item in zip(args.artifacts, done)]
        print(json.dumps(docs[0] if len(docs) == 1 else {key: docs}, indent=2))
    return done


def _run_against(args: argparse.Namespace, protocol, out: Console) -> int:
    """``run --against``: every file on both devices, compared output by output."""
    from .devices.crosscheck import compare_devices

    if args.compare:
        raise ValueError("--against compares two devices with each other; run --compare on each device for "
                         "parity with PyTorch")
    done = _each_file(args, "comparisons", lambda c: _print_against(c, out), lambda artifact: compare_devices(
        artifact, args.device, against=args.against, protocol=protocol, data=args.data, samples=args.samples,
        per_layer=args.per_layer, store=not args.no_store, input_shapes=args.input_shape, inputs=args.inputs,
        **_device_options(args)))
    return max((c.code for c in done if isinstance(c, FileError)), default=0)


def _print_against(c, out: Console) -> None:
    say = functools.partial(out.print, markup=False, highlight=False, soft_wrap=True)
    a, b = c.a, c.b
    verdict = "the same outputs" if c.agree else "different outputs"
    say(f"{a.model} ({a.format} {a.precision}) on {a.device} against {b.device}: {verdict}")
    for r in (a, b):
        fp = r.fingerprint
        emu = ", emulated" if fp.get("emulated") else ""
        say(f"  {r.device}: {fp.get('cpu_model')} ({fp.get('arch')}{_isa(fp)}{emu}), {fp.get('runtime')} "
            f"{fp.get('runtime_version')}, {kernels_of(r)}")
    say(f"  inputs: {c.inputs_source}")
    for o in c.outputs:
        say(f"  output {o.name}: {o.format()}")
    if c.layers is not None:
        first = c.first_parting
        say(f"  per-layer: {len(c.layers)} tensors compared ({c.kernels})")
        if first is None:
            say("  first tensor where they part: none")
        else:
            k = c.layers.index(first) + 1
            say(f"  first tensor where they part: #{k} {first.name} ({first.op}): {first.format()}")
            parted = [lay for lay in c.layers if lay.parts]
            say(f"  {len(parted)} of {len(c.layers)} tensors differ")
    for note in dict.fromkeys(a.notes + b.notes):
        say(f"  note: {note}")
    if c.stored_ids:
        say(f"  stored as results {', '.join(map(str, c.stored_ids))}")


def _isa(fp) -> str:
    """``", asimd asimddp"``: an ARM device's int8 ISA features, for the line that names its CPU."""
    feats = fp.get("isa_features")
    return "" if feats is None else f", {' '.join(feats) or 'no int8 ISA features'}"


def kernels_of(r) -> str:
    """Which kernels ran a result: XNNPACK's share of a TFLite graph, or the runtime's delegate."""
    x = r.conditions.get("xnnpack")
    if x:
        return (f"XNNPACK took {x['delegated_ops']} of {x['ops']} ops" if x["delegated_ops"]
                else f"XNNPACK took none of {x['ops']} ops")
    return str(r.fingerprint.get("delegate"))


def _print_run(m, out: Console) -> None:
    r, fp = m.result, m.result.fingerprint
    say = functools.partial(out.print, markup=False, highlight=False, soft_wrap=True)
    timing = f"emulated, not a latency: {r.stats.format()}" if fp.get("emulated") else r.stats.format()
    say(f"{r.model} ({r.format} {r.precision}) on {r.device}: {timing}")
    say(f"  {fp.get('runtime')} {fp.get('runtime_version')}, {kernels_of(r)}, {fp.get('threads')} thread(s), cores "
        f"{fp.get('pinned_cores')}, {fp.get('cpu_model')} ({fp.get('arch')}{_isa(fp)}, {fp.get('cores')} cores), "
        f"load {r.conditions.get('load_average_before')}")
    say(f"  inputs: {m.inputs_source}")
    _print_tensors(r, say)
    if m.parity:
        for name, rep in m.parity.items():
            say(f"  parity {name}: {rep.format()}")
            if rep.warning:
                say(f"  warning ({name}): {rep.warning}")
    else:
        say(f"  parity: {m.parity_note}")
    for note in r.notes:
        say(f"  note: {note}")
    if m.stored_id is not None:
        say(f"  stored as result {m.stored_id}")


def _print_tensors(r, say) -> None:
    """One line per input (as fed) and per output (of one sample): name, shape, dtype."""
    for kind, tensors in (("input", r.input_tensors), ("output", r.output_tensors)):
        for t in tensors:
            say(f"  {kind} {t['name']}: {'x'.join(map(str, t['shape']))} {t['dtype']}")


def _print_per_layer(pl, out: Console, top: int) -> None:
    """The ``top`` worst layers by SQNR and the first layer where the SQNR jumps down."""
    say = functools.partial(out.print, markup=False, highlight=False, soft_wrap=True)
    say(f"  per-layer parity: {len(pl.layers)} layers matched to PyTorch modules "
        f"({pl.runtime_tensors} runtime tensors)")
    jump = pl.first_jump
    if jump is None:
        say(f"  first jump: none ({pl.rule})")
    else:
        say(f"  first jump: {jump.layer} ({jump.op}) at {jump.sqnr_db:.1f} dB ({pl.rule})")
    table = Table(title=f"{min(top, len(pl.layers))} worst layers")
    for col in ("#", "layer", "op", "shape", "SQNR dB", "cosine", "max abs"):
        table.add_column(col, justify="left" if col in ("layer", "op", "shape") else "right", overflow="fold")
    position = {id(lp): i for i, lp in enumerate(pl.layers, 1)}
    for lp in pl.worst(top):
        rep = lp.report
        mark = "  <- first jump" if lp is jump else ""
        table.add_row(str(position[id(lp)]), lp.layer + mark, lp.op, "x".join(map(str, rep.shape[1:])),
                      f"{rep.sqnr_db:.1f}", f"{rep.cosine:.5f}", f"{rep.max_abs:.3g}")
    out.print(table)


def _run_table(done) -> Table:
    """One row per (file, measurement): the summary `make demo` ends with."""
    first = done[0][1].result
    emu = ", emulated: the times are not latencies" if first.fingerprint.get("emulated") else ""
    table = Table(title=f"on {first.device}, {first.fingerprint.get('threads')} thread(s){emu}")
    for col in ("file", "format", "precision", "median ms", "p90 ms", "CV %", "SQNR dB", "top-1 agree"):
        table.add_column(col, justify="left" if col in ("file", "format", "precision") else "right",
                         overflow="fold")
    for path, m in done:
        r = m.result
        rep = next(iter(m.parity.values())) if m.parity else None
        med = "-" if r.stats.median_ms is None else f"{r.stats.median_ms:.3f}"
        p90 = "-" if r.stats.p90_ms is None else f"{r.stats.p90_ms:.3f}"
        sqnr = "-" if rep is None else f"{rep.sqnr_db:.1f}"
        agree = "-" if rep is None or rep.top1_agreement is None else f"{100 * rep.top1_agreement:.1f} %"
        table.add_row(Path(path).name, r.format, r.precision,
                      med, p90, f"{100 * r.stats.cv:.1f}", sqnr, agree)
    return table


def cmd_results(args: argparse.Namespace, out: Console) -> int:
    from .devices.store import ResultStore

    store = ResultStore()
    rows = store.query(model=args.model, device=args.device, format=args.format, precision=args.precision,
                       input_shape=args.input_shape)
    if args.json:
        for r in rows:
            r.pop("latencies_ns")
        print(json.dumps({"database": str(store.path), "results": rows}, indent=2))
        return 0
    table = Table(title=f"{len(rows)} result(s) in {store.path}")
    for col in ("id", "model", "device", "format", "precision", "input", "median ms", "p90 ms", "CV %", "runtime",
                "threads", "emulated"):
        table.add_column(col, justify="right" if col in ("id", "median ms", "p90 ms", "CV %", "threads") else "left")
    for r in rows:
        fp = r["fingerprint"]
        med = "-" if r["median_ms"] is None else f"{r['median_ms']:.3f}"
        p90 = "-" if r["p90_ms"] is None else f"{r['p90_ms']:.3f}"
        emu = fp.get("emulated")
        table.add_row(str(r["id"]), r["model"], r["device"], r["format"], r["precision"], r["input_shape"] or "-",
                      med, p90, f"{100 * r['cv']:.1f}", f"{fp.get('runtime')} {fp.get('runtime_version')}",
                      str(fp.get("threads")),
                      f"yes ({emu.get('cpu') or 'unknown CPU'}): not a latency" if emu else "no")
    out.print(table)
    if any(r["fingerprint"].get("emulated") for r in rows):
        out.print("rows marked emulated ran under an emulator: their times are not the board's latency",
                  highlight=False)
    return 0


def cmd_board(args: argparse.Namespace, out: Console) -> int:
    from .devices import boards
    from .devices.agent import INT8_FEATURES

    say = functools.partial(out.print, markup=False, highlight=False, soft_wrap=True)
    log = (lambda msg: None) if args.json else say
    if args.action == "list":
        rows = boards.list_boards()
        if args.json:
            print(json.dumps({"boards_dir": str(boards.boards_dir()), "boards": rows}, indent=2))
            return 0
        table = Table(title=f"emulated boards in {boards.boards_dir()} (device qemu://NAME)")
        for col in ("name", "board", "qemu cpu", "state", "runtimes", "int8 features"):
            table.add_column(col, overflow="fold")
        for r in rows:
            runtimes = ", ".join(f"{k} {v}" for k, v in r.get("runtimes", {}).items()) or "-"
            feats = " ".join(f for f in INT8_FEATURES if f in r.get("features", [])) or "-"
            table.add_row(r["name"], r["board"], r["qemu_cpu"], f"{r['state']}: {r['detail']}", runtimes, feats)
        out.print(table)
        return 0
    names = args.names or []
    if not names:
        raise ValueError(f"board {args.action} needs board name(s); known boards: {', '.join(sorted(boards.BOARDS))}")
    for name in names:
        boards.spec_of(name)  # every name checked before anything is built or removed
    done = []
    for name in names:
        if args.action == "remove":
            removed = boards.remove_board(name)
            done.append({"name": name, "removed": removed})
            if not args.json:
                say(f"board {name} removed" if removed else f"board {name} was not built; nothing to remove")
            continue
        board = boards.ensure_board(name, rebuild=args.action == "rebuild", log=log)
        done.append({"name": name, "path": str(board.path), **board.info})
        if not args.json:
            say(f"board {name} ready: {board.path} (device qemu://{name})")
    if args.json:
        print(json.dumps({"boards": done}, indent=2))
    return 0


def _floats(kind, form: str, count: int | None = None):
    """An argparse type: comma-separated numbers of ``kind`` (``count`` of them when given)."""
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} must look like {form}") from None
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"{text!r} must look like {form} ({count} numbers)")
        return values
    return parse


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


def _input_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``--input-shape [NAME=]1x3x224x224`` -> (NAME or None, (1, 3, 224, 224))."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(v) for v in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must look like NAME=1x3x224x224 or 1x3x224x224"
                                         ) from None
    if any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"input shape {text!r}: every dimension must be a positive number")
    return name or None, shape


def _console() -> Console:
    """Rich console for stdout; 120 columns when stdout is not a terminal (a pipe or a log file),
    so tables of file names are not folded to rich's default of 80."""
    return Console() if sys.stdout.isatty() else Console(width=120)


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
    p.add_argument("model", help="a zoo variant, timm:NAME (a timm checkpoint of a zoo network, with --weights), "
                   "path/to/file.py:factory, package.module:factory or a torch.export program (.pt2)")
    p.add_argument("--input-size", type=_floats(int, "C,H,W", 3), metavar="C,H,W",
                   help="input of a network from outside the zoo, e.g. 3,224,224")
    p.add_argument("--mean", type=_floats(float, "M[,M,M]"), help="per-channel mean of the input normalisation")
    p.add_argument("--std", type=_floats(float, "S[,S,S]"), help="per-channel std of the input normalisation")
    p.add_argument("--preset", choices=("imagenet", "inception", "none"),
                   help="mean and std of a common normalisation (default imagenet)")
    p.add_argument("--name", help="file name stem of an external network's files (default: the factory's name)")
    p.add_argument("--format", default="onnx,tflite", help="comma list of onnx, tflite")
    p.add_argument("--precision", default="fp32,int8", help="comma list of fp32, int8")
    p.add_argument("--out", required=True, help="existing output directory")
    p.add_argument("--weights", help="weights file from `edgekit train` (sets classes, channels, resolution), or the "
                   "checkpoint of timm:NAME")
    p.add_argument("--arch", help="ArchSpec JSON to build instead of a zoo model")
    p.add_argument("--resolution", type=_resolution)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--calib", default="fashion-mnist", help="fashion-mnist[:N], a directory, or FILE.npy")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--calib-method", default="minmax", help="minmax, percentile, entropy or mse")
    p.add_argument("--calib-retry", default="mse,percentile", metavar="METHODS",
                   help="methods to calibrate again with, in turn, while an int8 file is below the SQNR floor; the "
                        "most faithful is kept ('' : none)")
    p.add_argument("--synthetic-calib", action="store_true", help="calibrate on random data (flagged everywhere)")
    p.add_argument("--io-dtype", default="int8", choices=("int8", "float32"), help="TFLite int8 file inputs/outputs")
    p.add_argument("--force", action="store_true", help="write int8 files below the SQNR floor too")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="top-1 points int8 may lose to fp32; beyond, the most sensitive layers stay float (mixed)")
    p.add_argument("--max-float-layers", type=int, metavar="N", help="at most N float layers for --max-drop")
    p.add_argument("--sensitivity", type=int, nargs="?", const=10, metavar="N",
                   help="measure per-layer int8 sensitivity and print the N most sensitive (default 10)")
    p.add_argument("--sequential", action="store_true",
                   help="convert everything in this process (by default, from 128x128 inputs up, a second process "
                        "converts the TFLite files while this one does the ONNX ones)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("validate", help="top-1 of an exported file and of its PyTorch source on real data")
    p.add_argument("artifact")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, help="first N test images only")
    p.add_argument("--weights", help="PyTorch weights or timm checkpoint (default: the file named in the manifest)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("train", help="train a zoo model or a searched ArchSpec (NAME --arch SPEC) on a labelled dataset "
                       "(Fashion-MNIST by default), or fine-tune a timm checkpoint (timm:NAME --init FILE)")
    p.add_argument("model")
    p.add_argument("--arch", help="ArchSpec JSON (`nas search --out`) to train instead of a zoo model, named NAME")
    p.add_argument("--width", type=float, help="zoo model: channel multiplier (default the model's own)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist[:N], a directory of IDX files or class folders")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", required=True, help="weights file to write (.pt)")
    p.add_argument("--in-chans", type=int, default=1, choices=(1, 3), help="1 or 3 (timm:NAME: always 3)")
    p.add_argument("--init", metavar="CHECKPOINT", help="fine-tune timm:NAME from this checkpoint (a new classifier "
                   "for the dataset's classes)")
    p.add_argument("--resolution", type=int, help="input side (default: 32, or the model's minimum)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit", type=int, help="train on the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("run", help="run an exported (or third-party) file on a device: outputs, latency, parity")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                   help=".onnx or .tflite file(s) (each with its manifest beside it, if any)")
    p.add_argument("--device", default="local", help="local, ssh://user@host[:port], adb://SERIAL or qemu://pi4 "
                   "| qemu://pi5 (emulated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed runs (at least; more while the CV is high)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-runs", type=int, help="cap on timed runs (default 4 x --runs)")
    p.add_argument("--target-cv", type=float, default=0.10, help="time more runs while the CV is above this")
    p.add_argument("--blocks", type=int, default=1, help="split the timed runs into N blocks with --gap-ms of sleep "
                                                         "between them (a measurement spread over time: on a "
                                                         "shared machine the fastest run then stops depending on "
                                                         "when it ran)")
    p.add_argument("--gap-ms", type=float, default=0.0, help="sleep between blocks, ms")
    p.add_argument("--no-pin", action="store_true", help="do not pin the agent to cores")
    p.add_argument("--compare", action="store_true", help="run the PyTorch reference on the same inputs")
    p.add_argument("--against", metavar="DEVICE", help="run the file on this device too, on the same inputs, and "
                   "compare the two devices' outputs (int8 steps / abs); with --per-layer, the first tensor where "
                   "they part")
    p.add_argument("--per-layer", action="store_true", help="with --compare: every intermediate tensor against "
                   "its PyTorch module (SQNR per layer, the first layer where it drops)")
    p.add_argument("--top", type=int, default=10, help="--per-layer: how many of the worst layers to print")
    p.add_argument("--data", help="images to feed a file with a manifest (test split; default fashion-mnist)")
    p.add_argument("--samples", type=int, help="input batches to run and compare (default 16)")
    p.add_argument("--weights", help="PyTorch weights for --compare (default: the manifest's)")
    p.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="[NAME=]SHAPE",
                   help="full shape of an input with dynamic dimensions, e.g. x=1x3x224x224 (repeatable; the "
                        "name may be left out when the file has one input)")
    p.add_argument("--inputs", metavar="FILE.npz", help="feed these arrays (input name -> tensor, numpy.savez) "
                   "instead of images or seeded random inputs; token ids and other index inputs need it")
    p.add_argument("--device-python", help="Python on the device (default python3; local: this one)")
    p.add_argument("--device-profile", help="JSON/TOML device profile: python, ssh_options, cache_dir, ...")
    p.add_argument("--device-cache", help="model cache directory on an ssh device (default .cache/edgekit)")
    p.add_argument("--ssh-option", action="append", default=[], help="extra ssh -o option, e.g. "
                   "UserKnownHostsFile=/path (repeatable)")
    p.add_argument("--adb", help="adb executable (default: adb on PATH)")
    p.add_argument("--benchmark-binary", help="TFLite benchmark_model binary for adb devices")
    p.add_argument("--no-store", action="store_true", help="do not append the result to the results store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("board", help="emulated ARM boards (qemu://pi4, qemu://pi5): list, build, rebuild, remove")
    p.add_argument("action", choices=("list", "build", "rebuild", "remove"))
    p.add_argument("names", nargs="*", metavar="NAME", help="pi4, pi5")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_board)
    p = sub.add_parser("results", help="list stored measurements (filters are shell-style globs)")
    p.add_argument("--model", help="e.g. 'ghostnet*'")
    p.add_argument("--device", help="e.g. 'ssh://*'")
    p.add_argument("--format", help="onnx or tflite")
    p.add_argument("--precision", help="e.g. 'int8*'")
    p.add_argument("--input-shape", help="e.g. '*x224x224' (several inputs: 'ids=1x16,mask=1x16')")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_results)
    from .lut.commands import add_lut_commands
    from .nas.commands import add_nas_commands
    add_lut_commands(sub)
    add_nas_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        return args.func(args, _console())
    except ValueError as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # what the command started is stopped by then (an ssh device's agent too)
        err.print("interrupted (Ctrl-C)", style="red", markup=False, highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
