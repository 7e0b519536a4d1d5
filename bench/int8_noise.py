"""Where an int8 file's noise comes from: one activation tensor at a time.

Takes a trained variant (weights cached by bench/quantization.py), exports its ONNX fp32 file and
the int8 one edgekit would write, then measures on held-out Fashion-MNIST test images the SQNR of
the logits against the fp32 file for:

- the weights alone int8: every activation quantize / dequantize pair replaced by a float clip to
  its range (the clipping stays: onnxruntime's quantizer drops a ReLU whose range starts at 0 and
  lets the quantize clip; the rounding goes);
- the weights int8 and exactly one activation tensor int8, for every activation tensor in turn.

The noise one tensor adds is 10^(-SQNR/10) minus the weights' own; summed over all tensors it
predicts the whole file's SQNR when the tensors' errors are independent (the report prints both).
Grouped by the op that produces the tensor (Conv, Add, HardSwish, Mul, ...), it says which kind of
tensor costs the most: a few dominant tensors call for a per-tensor fix (a better range, one float
layer); noise spread over hundreds of tensors calls for fewer quantized tensors or a better-trained
network.

    .venv/bin/python bench/int8_noise.py --variant fbnetv3_a --train-images 12000 --epochs 2
    .venv/bin/python bench/int8_noise.py --variant fbnetv3_a --train-images 30000 --epochs 2 --method mse

Writes bench/results/int8_noise-VARIANT-nIMAGES-METHOD.{json,md}.
"""
from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench._common import (RESULTS, TrainSettings, captured, family_and_variant, fingerprint,  # noqa: E402
                           trained_model, write_json)


def logits(model, x: np.ndarray) -> np.ndarray:
    """``model`` (ONNX bytes or proto) run one image at a time, 1 thread; edgekit's session keeps
    ORT's warnings down (a graph with pairs taken out leaves unused scales, one warning each)."""
    from edgekit.exporters.onnx import inference_session
    sess = inference_session(model if isinstance(model, bytes) else model.SerializeToString(), threads=1)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def activation_pairs(proto) -> list[tuple[str, str, str]]:
    """(tensor, producing op type, producing node) for every activation QuantizeLinear (its input is
    not a weight); edgekit names a node after the PyTorch module it came from."""
    inits = {i.name for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    pairs = []
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            src = producer.get(n.input[0])
            pairs.append((n.input[0], src.op_type if src else "graph input", src.name if src else ""))
    return pairs


def keep_only(proto, keep: set[str]):
    """A copy of the QDQ graph with every activation Q/DQ pair except those of ``keep`` replaced by a
    float Clip to the pair's range: the range's clipping stays (the quantizer drops a ReLU or ReLU6
    whose range starts at 0 and lets the quantize clip instead), its rounding goes."""
    import onnx
    from onnx import numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {i.name for i in g.initializer}
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    drop, alias, clips = set(), {}, {}
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]:
        if q.input[0] in keep:
            continue
        drop.add(id(q))
        scale, zero = float(values[q.input[1]]), values[q.input[2]]
        info = np.iinfo(zero.dtype)
        clipped = f"{q.output[0]}_clipped"
        clips[id(q)] = (q.input[0], clipped, np.float32((info.min - int(zero)) * scale),
                        np.float32((info.max - int(zero)) * scale))
        for dq in consumers[q.output[0]]:
            if dq.op_type == "DequantizeLinear":
                alias[dq.output[0]] = clipped
                drop.add(id(dq))

    def resolve(name: str) -> str:
        while name in alias:  # a requantized tensor: DQ -> Q -> DQ chains collapse to the float one
            name = alias[name]
        return name

    nodes = []
    for n in g.node:
        if id(n) in clips:  # in the removed quantize's place, so it comes after the tensor's producer
            src, clipped, lo, hi = clips[id(n)]
            g.initializer.extend([numpy_helper.from_array(np.array(lo), f"{clipped}_lo"),
                                  numpy_helper.from_array(np.array(hi), f"{clipped}_hi")])
            nodes.append(onnx.helper.make_node("Clip", [src, f"{clipped}_lo", f"{clipped}_hi"], [clipped]))
        elif id(n) not in drop:
            nodes.append(n)
    for n in nodes:
        for k, i in enumerate(n.input):
            n.input[k] = resolve(i)
    for o in g.output:
        if o.name in alias:
            nodes.append(onnx.helper.make_node("Identity", [resolve(o.name)], [o.name]))
    del g.node[:]
    g.node.extend(nodes)
    return m


def noise(sqnr_db: float) -> float:
    return 10.0 ** (-sqnr_db / 10.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="fbnetv3_a", help="a family, or a registered variant "
                   "of one of the nine (bench/_common.FAMILIES)")
    p.add_argument("--train-images", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--resolution", type=int, default=32, help="input side (raised to the model's minimum)")
    p.add_argument("--method", default="minmax", help="calibration method of the int8 file")
    p.add_argument("--images", type=int, default=64, help="held-out test images per measurement")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    import onnx
    import torch
    from edgekit.calibration.data import calibration_batch, preprocessing_for
    from edgekit.exporters.onnx import export_onnx_fp32, quantize_onnx_int8, sqnr_db
    variant = family_and_variant(args.variant)[1]
    ts = TrainSettings(resolution=args.resolution, limit=args.train_images, epochs=args.epochs)
    model, weights, _ = trained_model(variant, ts)
    pre = preprocessing_for(model.default_cfg)
    c, h, w = model.default_cfg["input_size"]
    calib = calibration_batch("fashion-mnist", pre, samples=256, seed=0, split="train")
    x = calibration_batch("fashion-mnist", pre, samples=args.images, seed=1, split="test")
    t0 = time.perf_counter()
    with captured():
        fp32 = export_onnx_fp32(model, torch.zeros(1, c, h, w))
        int8 = quantize_onnx_int8(fp32, calib, method=args.method, speed_check=False)
    proto = onnx.load_from_string(int8.model_bytes)
    ref = logits(fp32.model_bytes, x)
    whole = sqnr_db(ref, logits(proto, x))
    weights_only = sqnr_db(ref, logits(keep_only(proto, set()), x))
    pairs = activation_pairs(proto)
    print(f"{variant}: int8 {whole:.2f} dB, weights alone {weights_only:.2f} dB, {len(pairs)} activation tensors",
          flush=True)
    rows = []
    for k, (tensor, op, node) in enumerate(pairs):
        s = sqnr_db(ref, logits(keep_only(proto, {tensor}), x))
        rows.append({"tensor": tensor, "op": op, "node": node, "sqnr_db": round(s, 3),
                     "added_noise": max(noise(s) - noise(weights_only), 0.0)})
        if (k + 1) % 50 == 0:
            print(f"  {k + 1}/{len(pairs)} tensors", flush=True)
    total = sum(r["added_noise"] for r in rows)
    predicted = -10 * math.log10(total + noise(weights_only))
    by_op: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = by_op.setdefault(r["op"], {"tensors": 0, "noise": 0.0})
        g["tensors"] += 1
        g["noise"] += r["added_noise"]
    for g in by_op.values():
        g["share"] = round(g["noise"] / total, 4) if total else 0.0
    rows.sort(key=lambda r: r["sqnr_db"])
    doc = {"fingerprint": fingerprint(["bench/int8_noise.py", *(argv if argv is not None else sys.argv[1:])]),
           "variant": variant, "resolution": [h, w], "weights": str(weights.name), "method": args.method,
           "images": args.images, "int8_sqnr_db": round(whole, 3), "weights_only_sqnr_db": round(weights_only, 3),
           "predicted_sqnr_db": round(predicted, 3), "activation_tensors": len(rows),
           "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["noise"])), "tensors": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    top = rows[0]["added_noise"] / total if total else 0.0
    lines = [f"# int8 noise budget: {variant} at {h}x{w}, {args.method} calibration", "",
             f"{doc['fingerprint']['command']} ({doc['fingerprint']['date'][:10]}; {doc['seconds']:.0f} s). "
             f"Logits SQNR against the ONNX fp32 file on {args.images} held-out test images.", "",
             f"- whole int8 file: **{whole:.1f} dB**; weights alone int8: {weights_only:.1f} dB",
             f"- {len(rows)} activation tensors; one alone (with int8 weights): {rows[0]['sqnr_db']:.1f} to "
             f"{rows[-1]['sqnr_db']:.1f} dB; the noisiest one (`{rows[0]['node'] or rows[0]['tensor']}`) carries "
             f"{100 * top:.1f} % of the activations' noise",
             f"- their noise summed predicts {predicted:.1f} dB for the whole file", "",
             "| producing op | tensors | share of the activations' noise |", "|---|---:|---:|"]
    lines += [f"| {op} | {g['tensors']} | {100 * g['share']:.1f} % |" for op, g in doc["by_op"].items()]
    out = Path(args.out)
    stem = f"int8_noise-{variant}-n{args.train_images}-{args.method}"
    write_json(out / f"{stem}.json", doc)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
