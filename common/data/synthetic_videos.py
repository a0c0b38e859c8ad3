"""`synthetic_videos`: procedurally generated clips of moving objects with masks (TFDS builder).

The objects and backgrounds are those of `synthetic_scenes`, in its two styles: `natural` (the
`default` and `tiny` configs since 3.0.0: a class is a shape family plus a texture structure in
colours drawn independently of the class, on cluttered photograph backgrounds, so colour is a
nuisance as in natural video; since 4.0.0 a clip follows one large main object with up to two
smaller ones, as the scenes do) and `legacy` (the `legacy` and `legacy_tiny` configs: the 1.0.0
generator, unchanged, where a class is a shape family with its own colour and texture
distribution, so colour alone identifies it). In a clip each object translates, scales and
rotates at its own constant rate, the camera pans linearly over a background larger than the
frame, and the lighting (a per-channel gain) drifts from the first frame to the last; the depth
order is fixed, so objects occlude each other as they move. Textures are attached to the
objects, so a tracked point keeps its appearance up to the lighting change.

Features (docs/ARCHITECTURE.md):
  video            Video (T, S, S, 3) uint8, frames PNG-encoded (or JPEG, `encoding`)
  instance_masks   Tensor (T, S, S) uint8: 0 background; id k is the same object in every frame
                   (it may be absent from frames where it is hidden or out of view)
  label            ClassLabel(12): majority class by visible area over the clip
  fps              Scalar float32: the clip's frame rate, `FPS` (common.data.config.FPS_FEATURE),
                   so VITO's offsets in seconds (`data.offset_unit=auto`) and the curation's
                   length rule (`vito.curate --min_seconds`) apply as on real video

An object is kept only if, in at least one frame, at least 15% of it and ~0.2% of the frame show;
so every id appears in the clip. Clip `index` of split `split_id` is rendered from
`np.random.default_rng([seed, split_id, index])`.

Frame rate (`FPS` = 4 frames per second). The generator's motion is specified per frame, for a 64
px frame: objects move up to 1.5 px per frame along each axis (2.3% of the frame width), spin up to
0.15 rad and grow or shrink up to 2.5% per frame; the camera pans up to 0.75 px per frame. At 4 fps
that is at most 9.4% of the frame width per second (at that top speed an object takes about 11 s to
cross the frame, as a person walking across a wide shot), 34 degrees per second of rotation, 10%
per second of scale change (walking towards the camera from ~14 m) and a slow pan (<= 4.7% of the
frame per second): ordinary real-world speeds. At 25 fps the same clips would show objects crossing
the frame in under 2 s and spinning at 215 degrees per second. The rate also fits VITO's offsets in
seconds: the defaults `data.min_offset_seconds, max_offset_seconds = 0.04, 2.0` give frame offsets
`ceil(0.04 * 4) .. floor(2.0 * 4) = 1 .. 8` in the 16-frame clips (a 4 s clip; an offset of at most
half the clip leaves the first frame's position free), exactly the frame offsets of the local VITO
config before clips recorded a rate, and every value of docs/METHODS.md §7.3's maximum-offset sweep
{0.5, 1, 2.5} s is a distinct whole number of frames inside the clip (2, 4, 10). The `tiny` clips
(8 frames, 2 s) take offsets 1..7.

Configs: `default` (16 frames of 64 px, 2,000 / 200 / 200 clips, seed 0) and `tiny` (8 frames of
64 px, 32 / 8 / 8 clips), both `natural`; `legacy` (as `default`) and `legacy_tiny` (as `tiny`)
in the `legacy` style. Build with

  python -m common.data.synthetic_videos --data_dir ~/tensorflow_datasets --config default
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
import tensorflow_datasets as tfds

from common.data import build_tools, procedural, tfds_compat
from common.data.config import FPS_FEATURE

del tfds_compat  # imported for its fix to TFDS (see the module)

FPS = 4.0  # frames per second of every config (why: the module docstring)


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
      max_objects: most objects per clip; None: the style's (`procedural.CLIP_MAX_OBJECTS`: 3
        for `natural`, a main object and up to two smaller ones; 5 for `legacy`).
      encoding: frame encoding, `png` (lossless, default) or `jpeg` (quality 95).
      style: `natural` (colour a nuisance; the default since 3.0.0) or `legacy` (the 1.0.0
        generator).
      fps: frame rate recorded in every clip's `fps` feature (only a label: the rendering does
        not depend on it).
    """

    image_size: int = 64
    num_frames: int = 16
    num_train: int = 2000
    num_validation: int = 200
    num_test: int = 200
    seed: int = 0
    max_objects: int | None = None
    encoding: str = "png"
    style: str = "natural"
    fps: float = FPS

    def __post_init__(self):
        if self.style not in procedural.STYLES:
            raise ValueError(f"style must be one of {procedural.STYLES}, got {self.style!r}")
        if self.max_objects is None:
            self.max_objects = procedural.CLIP_MAX_OBJECTS[self.style]
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
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


# The `tiny` and `legacy_tiny` clips: sizes for tests.
_TINY_SIZES = dict(num_frames=8, num_train=32, num_validation=8, num_test=8)


class SyntheticVideos(
    build_tools.WorkerPoolBuilder,
    tfds.core.GeneratorBasedBuilder,
    skip_registration=__name__ in ("__main__", "__mp_main__"),
):
    """Clips of moving, occluding objects under a panning camera, with per-frame instance ids."""

    VERSION = tfds.core.Version("4.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "2.0.0": "New `natural` and `natural_tiny` configs: colour a nuisance (instance colours "
        "independent of the class, a class is a shape plus a texture structure); photograph "
        "backgrounds with stuff regions and distractors; wider object scales. The other "
        "configs render exactly as in 1.0.0.",
        "3.0.0": "`default` and `tiny` render the `natural` style (2.0.0's `natural` and "
        "`natural_tiny` clips, same seeds); the 1.0.0 generator stays, unchanged, as `legacy` "
        "and `legacy_tiny`, so earlier results stay reproducible. `natural` and "
        "`natural_tiny` are gone rather than kept as aliases: two names for one dataset would "
        "be built and cached twice and cited under two names. Every clip records its frame "
        "rate in a float32 `fps` feature (4 fps, see the module docstring), so offsets in "
        "seconds (`data.offset_unit=auto`) and `vito.curate --min_seconds` apply; at 4 fps "
        "VITO's default 0.04..2 s are the frame offsets 1..8 used before.",
        "4.0.0": "`natural` clips (`default`, `tiny`) have the object-centric layout of "
        "`synthetic_scenes` 4.0.0: 1-3 objects, a main one of radius 30-45% of the frame "
        "starting in its middle 30%, up to two smaller ones (7-16%), coarser class textures "
        "(0.5-0.9 tile px per image px); 3.0.0 drew 1-5 objects of 8-30%. `legacy*` unchanged.",
    }
    BUILDER_CONFIGS = [
        SyntheticVideosConfig(
            name="default",
            description="Colour a nuisance, cluttered backgrounds; 16 frames, 64 px, 2000/200/200.",
        ),
        SyntheticVideosConfig(
            name="tiny", description="8 frames, 64 px, 32/8/8 clips, for tests.", **_TINY_SIZES
        ),
        SyntheticVideosConfig(
            name="legacy",
            description="The 1.0.0 generator (colour identifies the class); 16 frames, 64 px.",
            style="legacy",
        ),
        SyntheticVideosConfig(
            name="legacy_tiny",
            description="`legacy`, 8 frames, 64 px, 32/8/8 clips, for tests.",
            style="legacy",
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
                    FPS_FEATURE: tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=("video", "label"),
            metadata=tfds.core.MetadataDict(
                seed=config.seed,
                style=config.style,
                fps=float(config.fps),
                class_names=list(procedural.CLASS_NAMES),
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
            frames = [io.BytesIO(f) for f in record["video"]]
            yield index, {**record, "video": frames, FPS_FEATURE: np.float32(config.fps)}


def main(argv=None):
    """Builds a config: `python -m common.data.synthetic_videos --data_dir D --config tiny`."""
    SyntheticVideos.build_command(argv)


if __name__ == "__main__":
    from common.data import synthetic_videos

    synthetic_videos.main()
