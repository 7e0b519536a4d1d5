"""Format exporters (``onnx``, ``tflite``) and the artifact files they produce (``artifact``).

``edgekit.export.export`` drives them for a whole model; these modules are imported lazily by it,
so importing one format does not load the other's toolchain.
"""
