"""Where ESPNetv2's TFLite int8 time goes: each part of every EESP block timed in fp32 and int8.

An EESP block is cut after each of its parts (grouped 1x1 reduce; the dilated depthwise branches
with their hierarchical-fusion adds and concat; BN + PReLU; grouped 1x1 expand; residual add +
PReLU), and each cut is converted by edgekit's TFLite exporters (fp32, and int8 calibrated on the
block's own inputs from Fashion-MNIST images) and timed, fp32 and int8 alternately, on one pinned
core at 1 thread; a part's time is the difference between its cut and the one before. Blocks of one
level share shapes and dilations, so one block per level is timed and counted as many times as the
level has blocks. The fixed cost of an invoke (a one-value model, converted and timed the same
way) is taken off the first part. The whole network is timed the same way, for the share the EESP
parts take of it.

Times are the 10th percentile of the alternating runs (what the host's other load adds to least):

    .venv/bin/python bench/int8_ops.py --side 32
    .venv/bin/python bench/int8_ops.py --side 64 --runs 3000

Writes bench/results/int8_ops-<model>-<side>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench._common import RESULTS, alternating_times, captured, fingerprint, write_json  # noqa: E402

PARTS = ("reduce (grouped 1x1 + BN + PReLU)", "branches (dilated DW 3x3 + HFF adds + concat)",
         "BN + PReLU after the concat", "expand (grouped 1x1 + BN)", "residual add + PReLU")


class Half(nn.Module):
    """x / 2 on one value: the fixed cost of an invoke, taken off the first part of each block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


class EESPCut(nn.Module):
    """An EESP block run up to and including part ``upto`` (1-5, as :data:`PARTS`)."""

    def __init__(self, block: nn.Module, upto: int):
        super().__init__()
        self.block, self.upto = block, upto

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        r = b.proj(x)
        if self.upto == 1:
            return r
        outs = [b.branches[0](r)]
        for branch in b.branches[1:]:
            outs.append(branch(r) + outs[-1])
        y = torch.cat(outs, 1)
        if self.upto == 2:
            return y
        y = b.br(y)
        if self.upto == 3:
            return y
        y = b.expand(y)
        if self.upto == 4:
            return y
        return b.act(y + x if b.residual else y)


def paired_p10(fp32: bytes, int8: bytes, runs: int, warmup: int = 100) -> tuple[float, float]:
    """10th-percentile microseconds of fp32 and int8 invokes alternated (order swapped every run),
    1 thread, pinned to one core; inputs set once, outside the timed region."""
    from ai_edge_litert.interpreter import Interpreter
    its = []
    rng = np.random.default_rng(0)
    for content in (fp32, int8):
        with captured():  # LiteRT announces its XNNPACK delegate on fd 2
            it = Interpreter(model_content=content, num_threads=1)
            it.allocate_tensors()
        d = it.get_input_details()[0]
        if d["dtype"] == np.float32:
            x = rng.standard_normal(d["shape"]).astype(np.float32)
        else:
            x = rng.integers(-100, 100, d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], x)
        its.append(it)
    times = alternating_times([it.invoke for it in its], runs=runs, warmup=warmup, pin=True)
    return tuple(float(np.percentile(t, 10)) * 1e6 for t in times)  # type: ignore[return-value]


def convert(module: nn.Module, inputs: torch.Tensor) -> tuple[bytes, bytes, dict[str, int]]:
    from edgekit.exporters.tflite import export_tflite_fp32, export_tflite_int8
    module = module.eval()
    with captured():
        f = export_tflite_fp32(module, inputs[:1])
        q = export_tflite_int8(module, inputs[:1], inputs.numpy())
    if q.quant_op_count:
        raise RuntimeError(f"the int8 cut has {q.quant_op_count} QUANTIZE/DEQUANTIZE ops: {dict(q.op_histogram)}")
    return f.model_bytes, q.model_bytes, dict(q.op_histogram)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="espnetv2_1_0")
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--calib", type=int, default=32, help="Fashion-MNIST images whose block inputs calibrate int8")
    args = p.parse_args(argv)
    from edgekit.calibration.data import calibration_batch, preprocessing_for
    from edgekit.models import create_model
    from edgekit.models.espnet import EESP
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_chans=1, resolution=args.side).eval()
    images = torch.from_numpy(calibration_batch("fashion-mnist", preprocessing_for(model.default_cfg),
                                                samples=args.calib, seed=1, split="test"))
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, EESP)}
    seen: dict[tuple, str] = {}  # (in shape, out channels, stride, dilations) -> first block's name
    count: dict[str, int] = {}
    feats: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: feats.__setitem__(n, a[0].detach()))
             for n, m in blocks.items()]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    for name, m in blocks.items():
        key = (tuple(feats[name].shape[1:]), m.expand[0].out_channels, m.stride, m.dilations)
        first = seen.setdefault(key, name)
        count[first] = count.get(first, 0) + 1

    doc = {"fingerprint": fingerprint(["bench/int8_ops.py", *argv]), "model": args.model, "side": args.side,
           "runs": args.runs, "statistic": "10th percentile of alternating runs, microseconds", "blocks": {}}
    invoke = paired_p10(*convert(Half(), torch.randn(8, 1, 1, 1))[:2], args.runs)
    doc["invoke_us"] = {"fp32": invoke[0], "int8": invoke[1]}
    fp32, int8, ops = convert(model, images)
    whole = paired_p10(fp32, int8, args.runs)
    doc["whole"] = {"fp32_us": whole[0], "int8_us": whole[1], "int8_ops": ops}
    print(f"{args.model} at {args.side} px: fp32 {whole[0]:.1f} us, int8 {whole[1]:.1f} us, "
          f"speed-up {whole[0] / whole[1]:.2f}x", flush=True)
    for name, n in count.items():
        block = blocks[name]
        cuts = []
        for upto in range(1, 6 if block.stride == 1 else 5):
            f, q, hist = convert(EESPCut(block, upto), feats[name])
            cuts.append(paired_p10(f, q, args.runs) + (hist,))
        parts = []
        prev = invoke
        for i, (a, b, hist) in enumerate(cuts):
            parts.append({"part": PARTS[i], "fp32_us": a - prev[0], "int8_us": b - prev[1], "cut_int8_ops": hist})
            prev = (a, b)
        doc["blocks"][name] = {"count": n, "input": list(feats[name].shape[1:]), "stride": block.stride,
                               "dilations": list(block.dilations), "parts": parts}
        print(f"{name} x{n} {tuple(feats[name].shape[1:])}: " + ", ".join(
            f"{q['fp32_us']:.1f}/{q['int8_us']:.1f}" for q in parts), flush=True)
    doc["totals"] = _totals(doc)
    stem = RESULTS / f"int8_ops-{args.model}-{args.side}"
    write_json(stem.with_suffix(".json"), doc)
    stem.with_suffix(".md").write_text(_table(doc))
    print(_table(doc))
    return 0


def _totals(doc: dict) -> dict:
    tot = {part: [0.0, 0.0] for part in PARTS}
    for b in doc["blocks"].values():
        for q in b["parts"]:
            tot[q["part"]][0] += b["count"] * q["fp32_us"]
            tot[q["part"]][1] += b["count"] * q["int8_us"]
    return {part: {"fp32_us": a, "int8_us": b} for part, (a, b) in tot.items()}


def _table(doc: dict) -> str:
    whole = doc["whole"]
    rows = ["| part of the EESP blocks | fp32 (us) | int8 (us) | int8 speed-up | share of the network's fp32 time "
            "| share of its int8 time |", "|---|---:|---:|---:|---:|---:|"]
    sums = [0.0, 0.0]
    for part, t in doc["totals"].items():
        a, b = t["fp32_us"], t["int8_us"]
        sums[0] += a
        sums[1] += b
        rows.append(f"| {part} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {100 * a / whole['fp32_us']:.0f} % "
                    f"| {100 * b / whole['int8_us']:.0f} % |")
    rows.append(f"| all EESP parts | {sums[0]:.1f} | {sums[1]:.1f} | {sums[0] / sums[1]:.2f}x "
                f"| {100 * sums[0] / whole['fp32_us']:.0f} % | {100 * sums[1] / whole['int8_us']:.0f} % |")
    rest = (whole["fp32_us"] - sums[0], whole["int8_us"] - sums[1])
    rows.append(f"| the rest (stem, pooling, input reinforcement, head) | {rest[0]:.1f} | {rest[1]:.1f} "
                f"| {rest[0] / rest[1]:.2f}x | {100 * rest[0] / whole['fp32_us']:.0f} % "
                f"| {100 * rest[1] / whole['int8_us']:.0f} % |")
    rows.append(f"| whole network | {whole['fp32_us']:.1f} | {whole['int8_us']:.1f} "
                f"| {whole['fp32_us'] / whole['int8_us']:.2f}x | 100 % | 100 % |")
    return (f"{doc['model']} at {doc['side']} px, random weights, 1 thread, {doc['statistic']} "
            f"({doc['runs']} runs each): `{doc['fingerprint']['command']}`\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
