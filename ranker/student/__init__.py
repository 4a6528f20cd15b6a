"""The shared-context student: a small cross-encoder that encodes the user context once.

:mod:`.network` holds its torch layers, :mod:`.model` the ranker, :mod:`.onnx` its ONNX
Runtime export and server. Distillation into it lives in
:mod:`newarrivals.ranker.training.distill`.
"""
