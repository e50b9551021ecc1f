"""Export trained encoders to a self-describing ONNX bundle (needs the ``train`` extra: torch, onnx).

``edgeav export`` lives in :mod:`export.onnx_export`; int8 quantisation in :mod:`export.quantize`;
the per-window encoder benchmark in :mod:`export.bench` (``python -m export.bench``).
Importing this package does not import torch: the CLI registers ``export`` on boxes without it.
"""
