"""cifarbench: config-driven CIFAR-10/100 image-classifier experiments with PyTorch and Hydra."""

__version__ = "0.2.0"
