"""`synthetic_scenes`: procedurally generated multi-object scenes with masks (TFDS builder).

Each image holds objects from 12 classes with random size, position and rotation, painted in
painter's order so objects occlude each other, in one of two styles (`common.data.procedural`):

* `natural` (the `default`, `tiny` and `s224` configs since 3.0.0): a class is a shape family
  plus a texture *structure* (bricks, grass, stripes, rings, ...: `common.data.textures`),
  painted in three colours drawn for each instance independently of its class, so colour is a
  nuisance as on natural images; backgrounds are recoloured patches of the photographs
  scikit-image ships in its wheel, with unannotated clutter (stuff regions from other
  photographs, distractor blobs with non-class textures). Since 4.0.0 an image has 1-3 objects:
  a main object (radius 30-45% of the image, centred in its middle 30%) and up to two smaller
  ones (radius 7-16%, anywhere, painted over it), as ImageNet photos centre one object in
  clutter; 3.0.0 drew 1-6 objects of radius 8-30% anywhere, and a supervised network could
  hardly tell the classes apart at 48 px (`procedural.MAIN_RADIUS`).
* `legacy` (the `legacy`, `legacy_tiny` and `legacy_s224` configs; the 1.0.0 scenes): a class is
  a shape family with its own colour and texture distribution (a fixed hue), on a
  low-saturation textured background. Colour alone identifies the classes and FH segments the
  objects almost perfectly (`benchmarks/proxy_difficulty.py`), so random colour filters already
  score well there: kept to reproduce the results of 1.0.0, not to measure methods on.

Nothing is downloaded: examples are
rendered locally, each one from `np.random.default_rng([seed, split_id, index])`, so a dataset
is a function of the builder config (seed, sizes) and of the builder version (the rendering
code) only, and not of the order in which examples are made or of the number of worker processes.

Features (docs/ARCHITECTURE.md):
  image          Image (S, S, 3) uint8, PNG
  instance_mask  Image (S, S, 1) uint8: 0 background, 1..n objects in painter's order
  class_mask     Image (S, S, 1) uint8: 0 background, c + 1 for class c
  labels         Tensor (12,) bool: multi-hot of the classes present
  label          ClassLabel(12): majority class by visible area
  fh_masks       Tensor (n_fh, S, S) uint8 or uint16: Felzenszwalb ids, one channel per
                 (scale, min_size) pair of the config

Objects that would show less than 15% of their area (or fewer than ~0.2% of the image's pixels)
are removed before painting, so a fully occluded object never gets an instance id or a label.

FH masks are computed on the full-resolution image with `skimage.segmentation.felzenszwalb`
(sigma 0.8). The default settings are DetCon's (1000, 1000) scaled by the pixel count
(`common.data.segmentation`): (29, 29) at 64 px, (358, 358) at 224 px. Measured on 100 `natural`
images: 21 / 34 / 43 segments per image at the 5 / 50 / 95th percentiles; on 300 `legacy`
images 4 / 7 / 10 / 14 / 20 at the 5 / 25 / 50 / 75 / 95th. How far the FH masks and colour are from
the answer is measured by `benchmarks/proxy_difficulty.py`.
The storage dtype follows from the config: uint8 when `S * S // min_size <= 256` (the most
segments FH can return), uint16 otherwise.

Configs: `default` (64 px, 8,000 / 1,000 / 1,000 images, seed 0), `tiny` (64 px, 256 / 64 / 64,
for tests), `s224` (224 px, 8,000 / 1,000 / 1,000), all `natural`; `legacy` (20,000 / 2,000 /
2,000), `legacy_tiny` and `legacy_s224` (20,000 / 2,000 / 2,000) in the `legacy` style, as in
1.0.0. The natural `default` has 10,000 images against 1.0.0's 24,000 so that its build (1.7
times the CPU per record: FH has more to segment) keeps the README's main job within 6 minutes
on 2 cores; 200 steps of batch 64 see each training image 1.6 times. Any other size via
`SyntheticScenesConfig`. Build with

  python -m common.data.synthetic_scenes --data_dir ~/tensorflow_datasets --config default

Rendering, FH and PNG encoding run in a pool of `num_workers` processes (default: all cores),
in example order.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from common.data import build_tools, procedural, segmentation, tfds_compat

del tfds_compat  # imported for its fix to TFDS (see the module)


@dataclasses.dataclass(eq=False)
class SyntheticScenesConfig(tfds.core.BuilderConfig):
    """Config of `synthetic_scenes`.

    Attributes:
      image_size: side of the square images in pixels (16..224).
      num_train: number of training images.
      num_validation: number of validation images.
      num_test: number of test images.
      seed: generation seed.
      max_objects: most objects drawn per image (1..max_objects); None: the style's
        (`procedural.SCENE_MAX_OBJECTS`: 3 for `natural`, a main object and up to two smaller
        ones; 6 for `legacy`).
      fh_settings: (scale, min_size) pairs, one FH channel each; None means DetCon's
        (1000, 1000) scaled to the image's pixel count.
      style: `natural` (colour a nuisance; the default since 3.0.0) or `legacy` (the 1.0.0
        generator).
    """

    image_size: int = 64
    num_train: int = 8000
    num_validation: int = 1000
    num_test: int = 1000
    seed: int = 0
    max_objects: int | None = None
    fh_settings: tuple[tuple[float, int], ...] | None = None
    style: str = "natural"

    def __post_init__(self):
        if self.style not in procedural.STYLES:
            raise ValueError(f"style must be one of {procedural.STYLES}, got {self.style!r}")
        if self.max_objects is None:
            self.max_objects = procedural.SCENE_MAX_OBJECTS[self.style]
        if not 16 <= self.image_size <= 224:
            raise ValueError(f"image_size must be in [16, 224], got {self.image_size}")
        if not 1 <= self.max_objects <= 255:
            raise ValueError(f"max_objects must be in [1, 255], got {self.max_objects}")
        if min(self.num_train, self.num_validation, self.num_test) < 1:
            raise ValueError("every split needs at least one example")
        if self.fh_settings is None:
            self.fh_settings = segmentation.default_fh_settings(self.image_size, self.image_size)
        self.fh_settings = tuple((float(s), int(m)) for s, m in self.fh_settings)
        if not self.fh_settings:
            raise ValueError("fh_settings needs at least one (scale, min_size) pair")

    @property
    def fh_dtype(self) -> np.dtype:
        """uint8 or uint16, from the most segments the settings allow at this image size."""
        size = self.image_size
        return segmentation.fh_dtype_for_size(size, size, self.fh_settings)


# Split sizes shared by configs: the tests' `tiny` ones, and 1.0.0's sizes kept by `legacy`.
_TINY_SIZES = {"num_train": 256, "num_validation": 64, "num_test": 64}
_LEGACY_SIZES = {"num_train": 20000, "num_validation": 2000, "num_test": 2000}


# Run as a script, this file is also imported under its package name by `main` (TFDS reads the
# builder's package files), so only that copy registers the dataset name.
class SyntheticScenes(
    build_tools.WorkerPoolBuilder,
    tfds.core.GeneratorBasedBuilder,
    skip_registration=__name__ in ("__main__", "__mp_main__"),
):
    """Multi-object scenes with instance, class and FH masks, generated locally."""

    VERSION = tfds.core.Version("4.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "2.0.0": "New `natural` and `natural_tiny` configs, where colour is a nuisance: "
        "instance colours drawn independently of the class (a class is a shape plus a texture "
        "structure); photograph backgrounds with stuff regions and distractors; object radius "
        "8-30% of the image. The other configs render exactly as in 1.0.0.",
        "3.0.0": "The `natural` style is the default: `default`, `tiny` and `s224` render as "
        "2.0.0's `natural` configs (same seeds, so `default` and `tiny` equal 2.0.0's `natural` "
        "and `natural_tiny` record for record, except that `default` and `s224` have 8,000 / "
        "1,000 / 1,000 images instead of 20,000 / 2,000 / 2,000); the 1.0.0 scenes stay as "
        "`legacy`, `legacy_tiny` and `legacy_s224`. `natural` and `natural_tiny` are gone (now "
        "`default` and `tiny`).",
        "4.0.0": "`natural` scenes (`default`, `tiny`, `s224`) are object-centric: 1-3 objects, "
        "a main one of radius 30-45% of the image centred in its middle 30%, and up to two "
        "smaller ones (7-16%) anywhere, painted over it; class textures 0.5-0.9 tile px per "
        "image px (coarser than 3.0.0's 0.7-1.4). On 3.0.0's 1-6 objects of 8-30% anywhere, "
        "a supervised `local` network reached 13.6 / 13.0 linear / kNN top-1 in 200 steps "
        "(random 11.7 / 9.4); here 31.2 / 28.7 (random 14.6 / 11.7). `legacy*` unchanged.",
    }
    BUILDER_CONFIGS = [
        SyntheticScenesConfig(name="default", description="64 px, 8k/1k/1k images."),
        SyntheticScenesConfig(
            name="tiny",
            description="64 px, 256/64/64 images, for tests.",
            **_TINY_SIZES,
        ),
        SyntheticScenesConfig(name="s224", description="224 px, 8k/1k/1k.", image_size=224),
        SyntheticScenesConfig(
            name="legacy",
            description="The 1.0.0 scenes (colour names the class); 64 px, 20k/2k/2k.",
            **_LEGACY_SIZES,
            style="legacy",
        ),
        SyntheticScenesConfig(
            name="legacy_tiny",
            description="The 1.0.0 scenes, 64 px, 256/64/64 images.",
            **_TINY_SIZES,
            style="legacy",
        ),
        SyntheticScenesConfig(
            name="legacy_s224",
            description="The 1.0.0 scenes, 224 px, 20k/2k/2k.",
            image_size=224,
            **_LEGACY_SIZES,
            style="legacy",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    # Marks the builders that `common.data.fh_masks` may prepare itself (no download involved).
    LOCAL_GENERATION = True

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        size = config.image_size
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "instance_mask": tfds.features.Image(
                        shape=(size, size, 1), encoding_format="png"
                    ),
                    "class_mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "labels": tfds.features.Tensor(shape=(procedural.NUM_CLASSES,), dtype=np.bool_),
                    "label": tfds.features.ClassLabel(names=list(procedural.CLASS_NAMES)),
                    # zlib: id maps are mostly runs; raw int64 lists would be ~30x larger.
                    "fh_masks": tfds.features.Tensor(
                        shape=(len(config.fh_settings), size, size),
                        dtype=config.fh_dtype.type,
                        encoding=tfds.features.Encoding.ZLIB,
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(
                fh_settings=[list(s) for s in config.fh_settings],
                seed=config.seed,
                style=config.style,
                class_names=list(procedural.CLASS_NAMES),
            ),
        )

    def _generate_examples(self, split_id: int, num_examples: int):
        config = self.builder_config
        render = functools.partial(
            procedural.scene_record,
            seed=config.seed,
            split_id=split_id,
            image_size=config.image_size,
            max_objects=config.max_objects,
            fh_settings=config.fh_settings,
            fh_dtype=config.fh_dtype.name,
            style=config.style,
        )
        records = self.render(render, num_examples)
        for index, record in enumerate(records):
            yield index, _as_example(record)


def _as_example(record: dict) -> dict:
    import io

    # Pre-encoded PNG bytes go through TFDS as file objects: the worker already encoded them.
    return {
        **record,
        "image": io.BytesIO(record["image"]),
        "instance_mask": io.BytesIO(record["instance_mask"]),
        "class_mask": io.BytesIO(record["class_mask"]),
    }


def main(argv=None):
    """Builds a config: `python -m common.data.synthetic_scenes --data_dir D --config tiny`."""
    SyntheticScenes.build_command(argv)


if __name__ == "__main__":
    from common.data import synthetic_scenes

    synthetic_scenes.main()
