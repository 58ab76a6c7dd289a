"""brainrt's trainer: train the paper's CNN on annotated slices and export a model bundle.

Needs the ``train`` extra (torch, onnx). The runtime (:mod:`brainrt`) never imports it.
"""
