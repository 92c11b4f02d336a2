"""Backbones by name, the classifier around them, checkpoints, ONNX export."""
