"""Datasets, augmentation and loaders. Nothing here imports the models or the trainer."""
