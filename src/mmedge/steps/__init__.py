"""Pipeline steps: the registry (``registry``, a leaf) and the steps that only need ONNX Runtime (``check``)."""
