"""edgeav: a streaming edge audio-visual surveillance daemon.

The runtime package. It never imports torch: models arrive as ONNX bundles
made by the ``train`` and ``export`` packages (the ``train`` extra).
"""

__version__ = "0.1.0"
