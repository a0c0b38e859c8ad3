"""`synthetic_videos`: procedurally generated clips of moving objects with masks (TFDS builder).

The objects and backgrounds are those of `synthetic_scenes`, in its two styles: `legacy` (the
`default` and `tiny` configs, unchanged since 1.0.0: a class is a shape family with its own
colour and texture distribution) and `natural` (the `natural` and `natural_tiny` configs, since
2.0.0: a class is a shape family plus a texture structure in colours drawn independently of the
class, on cluttered photograph backgrounds). In a clip each object translates, scales
and rotates at its own constant rate, the camera pans linearly over a background larger than
the frame, and the lighting (a per-channel gain) drifts from the first frame to the last; the
depth order is fixed, so objects occlude each other as they move. Textures are attached to the
objects, so a tracked point keeps its appearance up to the lighting change.

Features (docs/ARCHITECTURE.md):
  video            Video (T, S, S, 3) uint8, frames PNG-encoded (or JPEG, `encoding`)
  instance_masks   Tensor (T, S, S) uint8: 0 background; id k is the same object in every frame
                   (it may be absent from frames where it is hidden or out of view)
  label            ClassLabel(12): majority class by visible area over the clip

An object is kept only if, in at least one frame, at least 15% of it and ~0.2% of the frame show;
so every id appears in the clip. Clip `index` of split `split_id` is rendered from
`np.random.default_rng([seed, split_id, index])`.

Configs: `default` (16 frames of 64 px, 2,000 / 200 / 200 clips, seed 0) and `tiny` (8 frames of
64 px, 32 / 8 / 8 clips), both `legacy`; `natural` (as `default`) and `natural_tiny` (as
`tiny`). Build with

  python -m common.data.synthetic_videos --data_dir ~/tensorflow_datasets --config default
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
import tensorflow_datasets as tfds

from common.data import build_tools, procedural, tfds_compat

del tfds_compat  # imported for its fix to TFDS (see the module)


@dataclasses.dataclass(eq=False)
class SyntheticVideosConfig(tfds.core.BuilderConfig):
    """Config of `synthetic_videos`.

    Attributes:
      image_size: frame side in pixels (16..224).
      num_frames: frames per clip.
      num_train: number of training clips.
      num_validation: number of validation clips.
      num_test: number of test clips.
      seed: generation seed.
      max_objects: most objects per clip.
      encoding: frame encoding, `png` (lossless, default) or `jpeg` (quality 95).
      style: `legacy` (the 1.0.0 generator) or `natural` (colour a nuisance, since 2.0.0).
    """

    image_size: int = 64
    num_frames: int = 16
    num_train: int = 2000
    num_validation: int = 200
    num_test: int = 200
    seed: int = 0
    max_objects: int = 5
    encoding: str = "png"
    style: str = "legacy"

    def __post_init__(self):
        if self.style not in procedural.STYLES:
            raise ValueError(f"style must be one of {procedural.STYLES}, got {self.style!r}")
        if not 16 <= self.image_size <= 224:
            raise ValueError(f"image_size must be in [16, 224], got {self.image_size}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {self.num_frames}")
        if not 1 <= self.max_objects <= 255:
            raise ValueError(f"max_objects must be in [1, 255], got {self.max_objects}")
        if min(self.num_train, self.num_validation, self.num_test) < 1:
            raise ValueError("every split needs at least one clip")
        if self.encoding not in ("png", "jpeg"):
            raise ValueError(f"encoding must be png or jpeg, got {self.encoding!r}")


# The `tiny` and `natural_tiny` clips: sizes for tests.
_TINY_SIZES = dict(num_frames=8, num_train=32, num_validation=8, num_test=8)


class SyntheticVideos(
    build_tools.WorkerPoolBuilder,
    tfds.core.GeneratorBasedBuilder,
    skip_registration=__name__ in ("__main__", "__mp_main__"),
):
    """Clips of moving, occluding objects under a panning camera, with per-frame instance ids."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "2.0.0": "New `natural` and `natural_tiny` configs: colour a nuisance (instance colours "
        "independent of the class, a class is a shape plus a texture structure); photograph "
        "backgrounds with stuff regions and distractors; wider object scales. The other "
        "configs render exactly as in 1.0.0.",
    }
    BUILDER_CONFIGS = [
        SyntheticVideosConfig(name="default", description="16 frames, 64 px, 2000/200/200."),
        SyntheticVideosConfig(
            name="tiny", description="8 frames, 64 px, 32/8/8 clips, for tests.", **_TINY_SIZES
        ),
        SyntheticVideosConfig(
            name="natural",
            description="Colour a nuisance, cluttered backgrounds; 16 frames, 64 px, 2000/200/200.",
            style="natural",
        ),
        SyntheticVideosConfig(
            name="natural_tiny",
            description="`natural`, 8 frames, 64 px, 32/8/8 clips, for tests.",
            style="natural",
            **_TINY_SIZES,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    LOCAL_GENERATION = True

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        t, s = config.num_frames, config.image_size
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Video(
                        shape=(t, s, s, 3), encoding_format=config.encoding
                    ),
                    "instance_masks": tfds.features.Tensor(
                        shape=(t, s, s), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "label": tfds.features.ClassLabel(names=list(procedural.CLASS_NAMES)),
                }
            ),
            supervised_keys=("video", "label"),
            metadata=tfds.core.MetadataDict(
                seed=config.seed, style=config.style, class_names=list(procedural.CLASS_NAMES)
            ),
        )

    def _generate_examples(self, split_id: int, num_examples: int):
        config = self.builder_config
        render = functools.partial(
            procedural.clip_record,
            seed=config.seed,
            split_id=split_id,
            image_size=config.image_size,
            num_frames=config.num_frames,
            max_objects=config.max_objects,
            encoding=config.encoding,
            style=config.style,
        )
        records = self.render(render, num_examples, chunksize=8)
        for index, record in enumerate(records):
            yield index, {**record, "video": [io.BytesIO(f) for f in record["video"]]}


def main(argv=None):
    """Builds a config: `python -m common.data.synthetic_videos --data_dir D --config tiny`."""
    SyntheticVideos.build_command(argv)


if __name__ == "__main__":
    from common.data import synthetic_videos

    synthetic_videos.main()
