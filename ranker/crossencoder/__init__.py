"""The cross-encoder family: a BERT-style encoder reading (context, candidate) pairs.

:mod:`.model` holds the torch ranker (teacher, or a BERT student), :mod:`.onnx` its ONNX
Runtime export and server.
"""
