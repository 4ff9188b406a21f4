"""Models that leave the framework: a checkpoint as a self-contained classifier (inference), written as ONNX or
TorchScript and checked against PyTorch (export), or run on image files (predict)."""
