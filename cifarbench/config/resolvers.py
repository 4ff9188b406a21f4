"""The OmegaConf resolvers that cifarbench's configs use, registered on import (the entry points and the tests
import cifarbench.config before Hydra composes a config)."""

from __future__ import annotations

from omegaconf import OmegaConf

from cifarbench.errors import ConfigError


def per_dataset(dataset_name: str, values):
    """`${per_dataset:${dataset.name},{cifar10: 0.1, cifar100: 0.5, default: 0.1}}`: a recipe value that its paper
    sets per dataset (PyramidNet's learning rate, for one); `default` serves every other dataset."""
    if dataset_name in values:
        return values[dataset_name]
    if "default" in values:
        return values["default"]
    raise ConfigError(
        f"this recipe gives a value for {', '.join(values)} only, not for dataset={dataset_name}; set the key on "
        "the command line"
    )


def class_folders(root):
    """`${class_folders:${dataset.source.root}}`: an image folder's number of classes, counted when not given."""
    from cifarbench.data.imagefolder import count_class_folders

    return count_class_folders(root)


# Registered on import: the entry points and the tests import this module before Hydra composes a config.
OmegaConf.register_new_resolver("per_dataset", per_dataset, replace=True)
OmegaConf.register_new_resolver("class_folders", class_folders, replace=True)
