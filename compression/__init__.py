"""Compression (torch side): distillation, pruning, quantization, ONNX export, TensorRT build.

Nothing here is imported by the daemon or the engine at module level.
"""
