"""ONNX Runtime quantization, one concern per module (import from the module itself):

- ``graph``: op histogram, metadata carried to a rewritten model, ORT pre-processing, Gemm as MatMul + Add,
  ``prepare`` (the model every plan starts from), the zero-shot similarity head that stays float.
- ``calibration``: the model inputs to calibrate on, and activation ranges with ORT's calibrator.
- ``plan``: quantizable nodes and op types, and ``quantize_plan`` (a scheme per node: static, dynamic, float).
- ``dynamic``: the ``quantize.dynamic`` step (smoothing, saturation-free scales, keep_float).
- ``static``: the ``quantize.static`` step (QDQ with calibration, then dynamic for LSTM and tables).
- ``fp16``: the ``quantize.fp16`` step.
"""
