#!/usr/bin/env bash
# The main job on the embedded default: train a GhostNet briefly on Fashion-MNIST, export it as
# ONNX and TFLite in fp32 and full int8 (calibrated on real images), check each file against
# PyTorch, report each file's top-1 next to PyTorch's on the 10,000 test images, then run all four
# on the local device with the PyTorch reference on the same images: one table of latency and parity.
# Last, latency prediction on the same device, format and precision: an FBNet v1 latency lookup table
# at the demo's input (1 x 32 x 32, 10 classes) measured block by block as TFLite int8, then checked
# against whole sampled networks of that space, exported and run the same way (predicted vs measured).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-demo-out}
MODEL=${MODEL:-ghostnet_0_5}
mkdir -p "$OUT"
"$BIN/edgekit" models "${MODEL%%_*}*"
"$BIN/edgekit" train "$MODEL" --epochs 1 --limit 12000 --out "$OUT/$MODEL.pt"
"$BIN/edgekit" export "$MODEL" --weights "$OUT/$MODEL.pt" --out "$OUT"
FILES=("$OUT/$MODEL"-onnx-fp32.onnx "$OUT/$MODEL"-onnx-int8.onnx "$OUT/$MODEL"-tflite-fp32.tflite "$OUT/$MODEL"-tflite-int8.tflite)
for f in "${FILES[@]}"; do
  "$BIN/edgekit" validate "$f"
done
"$BIN/edgekit" run "${FILES[@]}" --device local --threads 1 --compare --samples 64
LUT_SPACE=(--resolution 32 --width 0.25 --in-chans 1 --num-classes 10)
"$BIN/edgekit" lut build "${LUT_SPACE[@]}" --format tflite --precision int8 --threads 1 --out "$OUT/lut.json"
"$BIN/edgekit" lut check --lut "$OUT/lut.json" --samples "${LUT_SAMPLES:-20}" --fit 6 --plot "$OUT/lut-check.png"
