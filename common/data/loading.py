"""Finding (and, for the embedded datasets, building) the TFDS dataset a config names."""

from __future__ import annotations

import importlib

import tensorflow_datasets as tfds

# Datasets this framework generates itself (no download): built on first use when the config
# allows it, so the main job runs on a fresh clone.
EMBEDDED_MODULES = {
    "synthetic_scenes": "common.data.synthetic_scenes",
    "synthetic_videos": "common.data.synthetic_videos",
}
# Builders defined in this repository for user data; importing the module registers them.
REPO_MODULES = ("common.data.folder_builders", "common.data.fh_masks")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset a config names is unknown or not prepared in its data_dir."""


def base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


def register_builders(name: str) -> None:
    """Imports the modules that define repository builders so `tfds.builder(name)` finds them."""
    module = EMBEDDED_MODULES.get(base_name(name))
    if module:
        importlib.import_module(module)
        return
    for module in REPO_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # optional extras (beam, av) missing: those builders are unavailable
            pass


def get_builder(data_config) -> tfds.core.DatasetBuilder:
    name = data_config.name
    register_builders(name)
    try:
        return tfds.builder(name, data_dir=data_config.get("data_dir") or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotFoundError(f"config.data.name: unknown dataset {name!r} ({e})") from None


def ensure_dataset(data_config) -> int:
    """Returns the number of examples of `data_config.split`, building an embedded dataset first
    if it is missing and `data_config.build_if_missing` allows it."""
    builder = get_builder(data_config)
    if not builder.is_prepared():
        name = data_config.name
        if base_name(name) in EMBEDDED_MODULES and data_config.get("build_if_missing", True):
            import jax
            from jax.experimental import multihost_utils

            if jax.process_index() == 0:
                print(f"building embedded dataset {name} in {builder.data_dir}", flush=True)
                builder.download_and_prepare()
            multihost_utils.sync_global_devices(f"built {name}")
            builder = get_builder(data_config)
        else:
            data_dir = data_config.get("data_dir") or "~/tensorflow_datasets"
            hint = f"`tfds build {base_name(name)} --data_dir {data_dir}`"
            if base_name(name) == "imagenet2012":
                hint += " with the ImageNet tar files in <data_dir>/downloads/manual"
            raise DatasetNotFoundError(
                f"dataset {name} is not prepared in {builder.data_dir}; prepare it with {hint}"
            )
    try:
        return builder.info.splits[data_config.split].num_examples
    except KeyError:
        raise DatasetNotFoundError(
            f"dataset {data_config.name} has no split {data_config.split!r}; "
            f"it has {sorted(builder.info.splits)}"
        ) from None
