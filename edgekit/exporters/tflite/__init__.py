"""PyTorch -> TFLite: fp32 with NHWC input and no TRANSPOSE inside, and full-integer int8.

fp32: the model is exported with ``torch.export``, wrapped so that it takes NHWC input (and, for a
spatial output, gives NHWC output), lightly rewritten (see :func:`_rewrite_for_nhwc` and
:func:`_fold_channel_shuffles`) and converted by litert-torch, whose layout pass then keeps every
4-D tensor NHWC.

int8: the fp32 flatbuffer is quantized by ai-edge-quantizer's static recipe (int8 per-channel
symmetric weights, int8 per-tensor asymmetric activations, integer compute), with activation ranges
measured on the caller's calibration images by the fp32 TFLite interpreter itself, so every range
belongs to a tensor that exists in the file. Before that, the int8 graph gets rewrites that turn ops
XNNPACK runs only in float (hard-swish, PReLU, average pooling, BN outside a conv) into ops it runs
in int8, and every tensor a same-scale op ties together (concat, pad, pool) gets one range, so the
file has no QUANTIZE / DEQUANTIZE inside and runs as one XNNPACK graph.

Why not litert-torch's PT2E quantizer: measured on this zoo at 1x64x64 (64 calibration images),
GhostNetV2 does not convert ('tfl.pad' op quantization parameters violate the same scale
constraint), EfficientNet-B0 keeps 73 QUANTIZE + 59 DEQUANTIZE and runs 0.71x the speed of its fp32
file, FBNetV3-B 64 + 58 and 0.36x; this route gives 0 of each and 2-7x on the same models.

>>> import torch, edgekit
>>> m = edgekit.create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32).eval()
>>> fp32 = export_tflite_fp32(m, torch.zeros(1, 1, 32, 32))       # doctest: +SKIP
>>> fp32.inputs[0].shape, fp32.inputs[0].layout                    # doctest: +SKIP
((1, 32, 32, 1), 'NHWC')

The work is split by job: :mod:`.conversion` (litert-torch, the float file), :mod:`.graph_rewrites`
(the FX rewrites before converting), :mod:`.activation_ranges` and :mod:`.int8` (calibration and
quantization), :mod:`.interpreter` (running a file), :mod:`.flatbuffer` (reading one),
:mod:`.tensor_names` (tensor names -> PyTorch modules) and :mod:`.tools` (running the tools quietly,
their versions and failures). This module re-exports the public entry points.
"""
from .conversion import LAYOUTS, FloatGraphs, TfliteExport, convert_float_graphs, export_tflite_fp32
from .flatbuffer import INT8_KERNEL_OPS, QUANT_OPS, op_histogram, op_list
from .int8 import IO_DTYPES, WEIGHTED_OPS, Int8Plan, export_tflite_int8, plan_tflite_int8, quantize_tflite, weighted_ops
from .interpreter import benchmark_tflite, io_tensors, run_tflite
from .tools import ConversionError, tool_versions

__all__ = ["TfliteExport", "ConversionError", "QUANT_OPS", "INT8_KERNEL_OPS", "export_tflite_fp32",
           "export_tflite_int8", "Int8Plan", "plan_tflite_int8", "quantize_tflite", "weighted_ops", "run_tflite",
           "benchmark_tflite", "op_histogram", "op_list", "io_tensors", "tool_versions", "convert_float_graphs",
           "FloatGraphs", "LAYOUTS", "IO_DTYPES", "WEIGHTED_OPS"]
