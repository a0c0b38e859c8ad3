"""TFDS builders for a folder of images (`folder_images`), a folder of videos (`folder_videos`),
and a folder of images with COCO-format instance annotations (`coco_folder`).

Layout (both builders)::

  root/                     one split, `train`, holding every file found below root
  root/{train,val,validation,test}/...   when every sub-directory of root is a split name
  .../<class>/<file>        when every file of every split lies exactly one directory below its
                            split root, that directory names the class (`label`, a ClassLabel
                            over the sorted class names of all splits); otherwise no `label`

Images (`.jpg`, `.jpeg`, `.png`, any case) are stored as their original bytes when they are 8-bit
JPEG/PNG (RGB, grey, alpha, palette), which TensorFlow decodes; other modes (CMYK JPEG, 16-bit
PNG, ...) are converted to RGB and stored as PNG. Every image is fully decoded once (PIL) to
catch corrupt files.

Masks: an image `name.ext` may have a mask `name_mask.png` next to it (8-bit ids, e.g. mode L or
a palette PNG whose indices are the ids; 255 is void by default, `common.data.void`). Chosen
over a parallel `masks/` tree because it works unchanged with class and split directories. If
any image has a mask, every image must have one; the feature `instance_mask` (Image (H, W, 1)
uint8) is then added, the name the training pipelines (`data.mask_source=gt`) and the evaluators
read, as for `coco_folder` and `synthetic_scenes`. (Version 1.0.0 called it `mask`; datasets
prepared then are still read, `common.data.sources`.) Likewise an image may have class ids
`name_class.png` (0 background, class c as c; PASCAL VOC's `SegmentationClass` next to its
`SegmentationObject`), all images or none: the feature `class_mask`, which gives the
segmentation probe its labels and object discovery its ABO^c. A mask whose size differs from
its image is an error naming both files.

Videos (`.mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg`) are decoded with PyAV, optionally resampled
to `fps` (frame k shows the last source frame at or before time k / fps), cut to `max_frames`,
resized (`resize`: (height, width), or an int for the shorter side), and stored as JPEG frames.

Bad input: a file that cannot be decoded is an error naming it, or, with `skip_corrupt=True`,
skipped and counted; the count and the skipped paths are in the dataset's metadata
(`builder.info.metadata['num_skipped']`, `['skipped_files']`) and in the log. An empty folder is
an error.

Use::

  config = ImageFolderConfig(name="photos", root_dir="/data/photos")
  builder = FolderImages(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  # later, without the folder: tfds.load("folder_images/photos", data_dir=data_dir)

  python -m common.data.folder_builders images --root_dir /data/photos --data_dir D --name photos
  python -m common.data.folder_builders videos --root_dir /data/clips --data_dir D --fps 5
  python -m common.data.folder_builders coco --images train=/data/imgs/train \\
      --annotations train=/data/train.json --images val=/data/imgs/val \\
      --annotations val=/data/val.json --data_dir D --name mine

COCO (`coco_folder`): what labelme, CVAT or Label Studio export: per split a folder of images
and an instances JSON (`images`, `annotations` with polygon or RLE `segmentation`, `iscrowd`,
`categories`), decoded with pycocotools (the reference implementation; the `coco` extra).
Every image listed in the JSON is stored (images of the folder that the JSON does not list are
not) with `instance_mask` and `class_mask` (see `coco_masks`): `iscrowd` regions are void (255,
`common.data.void`), categories give the classes, so object discovery (ABO^i and ABO^c), the
segmentation probe, DetCon's `mask_source=gt` and FH generation all read it. Errors name the
file and record: an unreadable JSON, an annotation naming a missing image id or a category
not in `categories`, an image file that is missing or whose size differs from the JSON, a
polygon vertex more than `COCO_POLYGON_TOLERANCE` px outside the image, an RLE of another size,
different categories in two splits.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from common.data import tfds_compat

del tfds_compat  # imported for its fix to TFDS (see the module)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MASK_SUFFIX = "_mask.png"
CLASS_SUFFIX = "_class.png"
# Companion PNGs of an image (suffix replacing its extension) -> the feature they become.
COMPANIONS = {MASK_SUFFIX: "instance_mask", CLASS_SUFFIX: "class_mask"}
SPLIT_DIRS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_MAX_LISTED_SKIPS = 1000  # skipped paths kept in the metadata (the count is always exact)


class CorruptFileError(ValueError):
    """A file of the folder cannot be decoded."""


# ---------------------------------------------------------------------------------------------
# Folder scan (shared).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FolderLayout:
    """What a scan of the root found.

    Attributes:
      files: split name -> sorted paths relative to the root (with `/` separators).
      class_names: sorted class names, or None when the folder has no class directories.
      split_dirs: whether the first directory level names the splits.
    """

    files: dict[str, list[str]]
    class_names: list[str] | None
    split_dirs: bool

    def label_of(self, relpath: str) -> str:
        return relpath.split("/")[1 if self.split_dirs else 0]


def _walk(root: str, extensions: Sequence[str]) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(extensions) and not name.startswith("."):
                found.append(
                    os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                )
    return sorted(found)


def scan_folder(
    root: str, extensions: Sequence[str], *, exclude_suffix: str | tuple[str, ...] | None = None
):
    """Finds the splits, files and classes of a folder (see the module docstring).

    Raises:
      FileNotFoundError: if `root` is not a directory.
      ValueError: if it holds no file with one of `extensions`.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder {root} does not exist or is not a directory")
    files = _walk(root, extensions)
    if exclude_suffix:
        files = [f for f in files if not f.lower().endswith(exclude_suffix)]
    if not files:
        raise ValueError(f"folder {root} holds no file of type {', '.join(extensions)}")
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    top_files = [f for f in files if "/" not in f]
    split_dirs = bool(subdirs) and not top_files and all(d in SPLIT_DIRS for d in subdirs)
    by_split: dict[str, list[str]] = {}
    if split_dirs:
        for f in files:
            by_split.setdefault(SPLIT_DIRS[f.split("/")[0]], []).append(f)
        depth = 3  # split/class/file
    else:
        by_split["train"] = files
        depth = 2  # class/file
    labelled = all(f.count("/") == depth - 1 for f in files)
    class_names = None
    if labelled:
        class_names = sorted({f.split("/")[depth - 2] for f in files})
    return FolderLayout(files=by_split, class_names=class_names, split_dirs=split_dirs)


def _default_config_name(root: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", os.path.basename(os.path.normpath(root))).strip("_")
    return name.lower() or "folder"


class _SkipCounter:
    """Counts and lists the files skipped as corrupt, per split."""

    def __init__(self):
        self.paths: list[str] = []
        self.per_split: dict[str, int] = {}

    def add(self, split: str, path: str, error: Exception) -> None:
        logging.warning("skipping corrupt file %s: %s", path, error)
        self.per_split[split] = self.per_split.get(split, 0) + 1
        if len(self.paths) < _MAX_LISTED_SKIPS:
            self.paths.append(path)

    def write(self, metadata) -> None:
        metadata["num_skipped"] = sum(self.per_split.values())
        metadata["num_skipped_per_split"] = dict(self.per_split)
        metadata["skipped_files"] = list(self.paths)


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: layout scan, splits, skip accounting."""

    EXTENSIONS: tuple[str, ...] = ()
    EXCLUDE_SUFFIX: tuple[str, ...] | None = None  # files that are not examples

    def __init__(self, **kwargs):
        self._layout: FolderLayout | None = None
        self._skips = _SkipCounter()
        super().__init__(**kwargs)

    @property
    def layout(self) -> FolderLayout:
        if self._layout is None:
            self._layout = scan_folder(
                self.builder_config.root_dir, self.EXTENSIONS, exclude_suffix=self.EXCLUDE_SUFFIX
            )
        return self._layout

    def _common_features(self) -> dict:
        features = {}
        if self.layout.class_names is not None:
            features["label"] = tfds.features.ClassLabel(names=self.layout.class_names)
        return features

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in self.layout.files}

    def _generate_examples(self, split: str):
        root = self.builder_config.root_dir
        for relpath in self.layout.files[split]:
            path = os.path.join(root, relpath)
            try:
                example = self._load(path)
            except CorruptFileError as e:
                if not self.builder_config.skip_corrupt:
                    raise
                self._skips.add(split, path, e)
                continue
            if self.layout.class_names is not None:
                example["label"] = self.layout.label_of(relpath)
            yield relpath, example
        # Written after each split; TFDS saves the metadata after the last one.
        self._skips.write(self.info.metadata)

    def _load(self, path: str) -> dict:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """Config of `folder_images`.

    Attributes:
      root_dir: the folder.
      skip_corrupt: skip (and count) undecodable images instead of failing.
    """

    root_dir: str = ""

    skip_corrupt: bool = False

    def __post_init__(self):
        if not self.root_dir:
            raise ValueError("ImageFolderConfig needs a root_dir")
        self.root_dir = os.path.abspath(os.path.expanduser(self.root_dir))


# TensorFlow's decoder reads these (format, PIL mode) pairs as 8-bit images, so the original
# bytes are stored as they are; anything else is converted to RGB PNG. (For JPEG, TF and PIL may
# differ by a few levels; what counts is that every consumer decodes through TFDS.)
_KEEP_AS_IS = {
    ("JPEG", "RGB"),
    ("JPEG", "L"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "L"),
    ("PNG", "LA"),
    ("PNG", "P"),
}


def _open_image(path: str):
    """Fully decodes an image with PIL; `CorruptFileError` naming the file if it cannot."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()  # decodes everything: truncated files fail here, not at open
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise CorruptFileError(f"cannot decode image {path}: {e}") from e
    return image


def _image_bytes(image, path: str) -> bytes:
    """What to store for a decoded image: the file's own bytes when TensorFlow reads them as
    8-bit (`_KEEP_AS_IS`), else the pixels as RGB PNG."""
    if (image.format, image.mode) in _KEEP_AS_IS:
        with open(path, "rb") as f:
            return f.read()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# Run as a script, this file is also imported under its package name by `main` (TFDS reads the
# builder's package files), so only that copy registers the dataset names.
_SKIP_REGISTRATION = __name__ in ("__main__", "__mp_main__")


class FolderImages(_FolderBuilder, skip_registration=_SKIP_REGISTRATION):
    """A folder of JPEG/PNG images (optionally with masks and class directories) as TFDS."""

    name = "folder_images"
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "2.0.0": "Instance masks are stored as `instance_mask` (was `mask`), the feature that "
        "`data.mask_source=gt` training and every evaluator read, as in `coco_folder` and "
        "`synthetic_scenes` (1.0.0 datasets stay readable: `common.data.sources` reads their "
        "`mask` as `instance_mask`). New: class ids `name_class.png` -> `class_mask`, for the "
        "segmentation probe and ABO^c.",
    }
    EXTENSIONS = IMAGE_EXTENSIONS
    EXCLUDE_SUFFIX = tuple(COMPANIONS)
    LOCAL_GENERATION = True

    @property
    def companions(self) -> list[str]:
        """The suffixes of `COMPANIONS` that the folder's images have (every image or none).

        Raises:
          ValueError: a companion file without its image, or some images without one.
        """
        root = self.builder_config.root_dir
        images = [f for files in self.layout.files.values() for f in files]
        found = []
        for suffix in COMPANIONS:
            what = "mask" if suffix == MASK_SUFFIX else "class mask"
            have = set(_walk(root, (suffix,)))
            expected = {_companion_relpath(f, suffix) for f in images}
            orphans = sorted(have - expected)
            if orphans:
                raise ValueError(
                    f"{what} {os.path.join(root, orphans[0])} has no image (expected "
                    f"{os.path.join(root, orphans[0][: -len(suffix)])}.jpg/.jpeg/.png)"
                )
            if have and have != expected:
                missing = sorted(f for f in images if _companion_relpath(f, suffix) not in have)[0]
                raise ValueError(
                    f"image {os.path.join(root, missing)} has no {what} "
                    f"{os.path.join(root, _companion_relpath(missing, suffix))}, while other "
                    f"images of {root} have one: give every image a {what} or none"
                )
            if have:
                found.append(suffix)
        return found

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            **self._common_features(),
        }
        for suffix in self.companions:
            features[COMPANIONS[suffix]] = tfds.features.Image(
                shape=(None, None, 1), encoding_format="png"
            )
        return self.dataset_info_from_configs(
            description=f"Images of the folder {self.builder_config.root_dir}.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(root_dir=self.builder_config.root_dir),
        )

    def _generate_examples(self, split: str):
        for key, example in super()._generate_examples(split):
            example["image/filename"] = key
            yield key, example

    def _load(self, path: str) -> dict:
        from PIL import Image

        image = _open_image(path)
        example = {"image": io.BytesIO(_image_bytes(image, path))}
        for suffix, feature in COMPANIONS.items():
            if feature not in self.info.features:
                continue
            mask_path = path[: -len(os.path.splitext(path)[1])] + suffix
            mask = _open_image(mask_path)
            if mask.size != image.size:
                raise ValueError(
                    f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} (width x height) but "
                    f"its image {path} is {image.size[0]}x{image.size[1]}"
                )
            ids = np.asarray(mask)
            if ids.ndim != 2:
                raise ValueError(f"mask {mask_path} must be single-channel ids (mode {mask.mode})")
            if ids.dtype != np.uint8:
                if ids.min() < 0 or ids.max() > 255:
                    raise ValueError(f"mask {mask_path} has ids outside 0..255")
                ids = ids.astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(ids, mode="L").save(buffer, format="PNG")
            example[feature] = io.BytesIO(buffer.getvalue())
        return example


def _companion_relpath(image_relpath: str, suffix: str = MASK_SUFFIX) -> str:
    return os.path.splitext(image_relpath)[0] + suffix


# ---------------------------------------------------------------------------------------------
# Videos.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """Config of `folder_videos`.

    Attributes:
      root_dir: the folder.
      fps: resample every video to this frame rate (None: keep every decoded frame).
      max_frames: keep at most this many frames from the start (None: all).
      resize: `(height, width)`, or an int for the shorter side keeping the aspect ratio, or
        None to keep the size.
      jpeg_quality: quality of the stored JPEG frames.
      skip_corrupt: skip (and count) undecodable videos instead of failing.
    """

    root_dir: str = ""
    fps: float | None = None
    max_frames: int | None = None
    resize: int | tuple[int, int] | None = None
    jpeg_quality: int = 90
    skip_corrupt: bool = False

    def __post_init__(self):
        if not self.root_dir:
            raise ValueError("VideoFolderConfig needs a root_dir")
        self.root_dir = os.path.abspath(os.path.expanduser(self.root_dir))
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {self.max_frames}")
        if isinstance(self.resize, Sequence):
            self.resize = tuple(int(x) for x in self.resize)
            if len(self.resize) != 2 or min(self.resize) < 1:
                raise ValueError(f"resize must be (height, width) or an int, got {self.resize}")
        elif self.resize is not None and int(self.resize) < 1:
            raise ValueError(f"resize must be positive, got {self.resize}")


@dataclasses.dataclass
class DecodedVideo:
    """Frames of one video after resampling: uint8 `[T, H, W, 3]`, times in seconds, fps."""

    frames: np.ndarray
    times: np.ndarray
    fps: float
    source_fps: float


def _output_size(height: int, width: int, resize) -> tuple[int, int]:
    if resize is None:
        return height, width
    if isinstance(resize, tuple):
        return resize
    scale = int(resize) / min(height, width)
    return max(round(height * scale), 1), max(round(width * scale), 1)


def decode_video(
    path: str,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    resize: int | tuple[int, int] | None = None,
) -> DecodedVideo:
    """Decodes a video file with PyAV, resampling to `fps` by sample-and-hold.

    Output frame `k` is at time `t0 + k / fps` (t0: the first frame's time) and shows the last
    decoded frame at or before it; frames are produced while that time is before the end of the
    video (last frame time + one frame duration). Without `fps`, every decoded frame is kept.

    Raises:
      CorruptFileError: naming `path`, if it cannot be opened or decoded or has no frame.
    """
    import av

    eps = 1e-6
    frames, times = [], []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise CorruptFileError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate) if stream.average_rate else None
            size = None
            previous = None  # (time, rgb array) of the last decoded frame
            count = 0

            def emit(image, time):
                frames.append(image)
                times.append(time)

            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else count / (rate or 25.0)
                count += 1
                if size is None:
                    size = _output_size(frame.height, frame.width, resize)
                    t0 = t
                # A copy: PyAV may hand out a view of a buffer that the next conversion reuses.
                image = frame.to_ndarray(
                    format="rgb24", width=size[1], height=size[0], interpolation="AREA"
                ).copy()
                if fps is None:
                    emit(image, t)
                else:
                    # Every output time before this frame's time shows the previous frame.
                    while previous is not None and t0 + len(frames) / fps < t - eps:
                        emit(previous[1], t0 + len(frames) / fps)
                        if max_frames is not None and len(frames) >= max_frames:
                            break
                    previous = (t, image)
                if max_frames is not None and len(frames) >= max_frames:
                    break
            if fps is not None and previous is not None:
                end = previous[0] + (1.0 / rate if rate else 0.0)
                while (max_frames is None or len(frames) < max_frames) and (
                    t0 + len(frames) / fps < end - eps or not frames
                ):
                    emit(previous[1], t0 + len(frames) / fps)
    except CorruptFileError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"cannot decode video {path}: {e}") from e
    if not frames:
        raise CorruptFileError(f"video {path} has no decodable frame")
    return DecodedVideo(
        frames=np.stack(frames),
        times=np.asarray(times, dtype=np.float32),
        fps=float(fps) if fps is not None else (rate or 0.0),
        source_fps=rate or 0.0,
    )


class FolderVideos(_FolderBuilder, skip_registration=_SKIP_REGISTRATION):
    """A folder of video files (optionally with class directories) as TFDS, JPEG frames."""

    name = "folder_videos"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    EXTENSIONS = VIDEO_EXTENSIONS
    LOCAL_GENERATION = True

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        height = width = None
        if isinstance(config.resize, tuple):
            height, width = config.resize
        features = {
            "video": tfds.features.Video(shape=(None, height, width, 3), encoding_format="jpeg"),
            "video/filename": tfds.features.Text(),
            # Time of each stored frame in the source video, in seconds.
            "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "fps": tfds.features.Scalar(dtype=np.float32),
            **self._common_features(),
        }
        return self.dataset_info_from_configs(
            description=f"Videos of the folder {config.root_dir}.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(
                root_dir=config.root_dir,
                fps=config.fps,
                max_frames=config.max_frames,
                resize=list(config.resize) if isinstance(config.resize, tuple) else config.resize,
            ),
        )

    def _generate_examples(self, split: str):
        for key, example in super()._generate_examples(split):
            example["video/filename"] = key
            yield key, example

    def _load(self, path: str) -> dict:
        from PIL import Image

        config = self.builder_config
        video = decode_video(
            path, fps=config.fps, max_frames=config.max_frames, resize=config.resize
        )
        encoded = []
        for frame in video.frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=config.jpeg_quality)
            encoded.append(io.BytesIO(buffer.getvalue()))
        return {"video": encoded, "timestamps": video.times, "fps": np.float32(video.fps)}


# ---------------------------------------------------------------------------------------------
# COCO-format annotations (labelme, CVAT, Label Studio exports).
# ---------------------------------------------------------------------------------------------

COCO_VOID = 255  # the void id of the stored masks (`common.data.void`'s 8-bit default)
COCO_MAX_INSTANCES = COCO_VOID - 1  # instance ids 1..254 fit an 8-bit mask beside the void
# Polygon vertices may lie this far outside the image rectangle [0, W] x [0, H]: annotation
# tools snap to pixel centres or edges and round, so a vertex a fraction of a pixel out is
# common and harmless; anything further is a wrong image or wrong coordinates.
COCO_POLYGON_TOLERANCE = 1.0


class CocoAnnotationError(ValueError):
    """A COCO annotation file is unreadable or inconsistent (the message names file and record)."""


@dataclasses.dataclass(eq=False)
class CocoFolderConfig(tfds.core.BuilderConfig):
    """Config of `coco_folder`.

    Attributes:
      images: split name -> folder of the images (the annotations' `file_name`s are relative
        to it).
      annotations: split name -> COCO instances JSON (same splits as `images`).
      skip_corrupt: skip (and count) undecodable images instead of failing.
    """

    images: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    skip_corrupt: bool = False

    def __post_init__(self):
        if not self.images or not self.annotations:
            raise ValueError("CocoFolderConfig needs images and annotations (split -> path)")
        if set(self.images) != set(self.annotations):
            raise ValueError(
                f"CocoFolderConfig: splits of images {sorted(self.images)} and annotations "
                f"{sorted(self.annotations)} differ"
            )
        self.images = {k: os.path.abspath(os.path.expanduser(v)) for k, v in self.images.items()}
        self.annotations = {
            k: os.path.abspath(os.path.expanduser(v)) for k, v in self.annotations.items()
        }


@dataclasses.dataclass
class CocoSplit:
    """One validated annotation file.

    Attributes:
      path: the JSON file.
      images: the `images` records, in file order.
      annotations: image id -> its annotation records, in file order.
      categories: `(id, name)` sorted by id; class `c` (mask value `c + 1`) is the c-th.
    """

    path: str
    images: list[dict]
    annotations: dict[int, list[dict]]
    categories: list[tuple[int, str]]


def _need(record: dict, keys: Sequence[str], what: str, path: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise CocoAnnotationError(f"{path}: {what} lacks {missing}: {str(record)[:200]}")


def read_coco_annotations(path: str) -> CocoSplit:
    """Reads and checks a COCO instances file (not the segmentations' pixels: `coco_masks`).

    Raises:
      CocoAnnotationError: naming the file and the record for an unreadable file, missing keys,
        duplicate ids, an annotation naming an image or category that is not listed.
    """
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CocoAnnotationError(f"cannot read COCO annotations {path}: {e}") from e
    if not isinstance(data, dict):
        raise CocoAnnotationError(f"{path}: expected a JSON object, got {type(data).__name__}")
    _need(data, ("images", "annotations", "categories"), "the file", path)
    categories = {}
    for c in data["categories"]:
        _need(c, ("id", "name"), "category", path)
        if c["id"] in categories:
            raise CocoAnnotationError(f"{path}: category id {c['id']} is listed twice")
        categories[c["id"]] = str(c["name"])
    if len(categories) > COCO_VOID - 1:
        raise CocoAnnotationError(
            f"{path}: {len(categories)} categories; 8-bit class masks hold at most {COCO_VOID - 1}"
        )
    images, ids = [], set()
    for im in data["images"]:
        _need(im, ("id", "file_name", "height", "width"), "image", path)
        if im["id"] in ids:
            raise CocoAnnotationError(f"{path}: image id {im['id']} is listed twice")
        ids.add(im["id"])
        images.append(im)
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        _need(a, ("id", "image_id", "category_id", "segmentation"), "annotation", path)
        if a["image_id"] not in ids:
            raise CocoAnnotationError(
                f"{path}: annotation {a['id']} names image id {a['image_id']}, which is not in "
                f"`images`"
            )
        if a["category_id"] not in categories:
            raise CocoAnnotationError(
                f"{path}: annotation {a['id']} has category_id {a['category_id']}, which is not "
                f"in `categories` (ids {sorted(categories)})"
            )
        by_image.setdefault(a["image_id"], []).append(a)
    return CocoSplit(path, images, by_image, sorted(categories.items()))


def _annotation_mask(ann: dict, height: int, width: int, where: str) -> np.ndarray:
    """bool `[H, W]` of one annotation's segmentation (polygons or RLE), by pycocotools."""
    from pycocotools import mask as mask_utils

    segm = ann["segmentation"]
    try:
        if isinstance(segm, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
            for poly in segm:
                xy = np.asarray(poly, np.float64).reshape(-1)
                if xy.size < 6 or xy.size % 2:
                    raise CocoAnnotationError(
                        f"{where}: a polygon needs >= 3 (x, y) pairs, got {xy.size} numbers"
                    )
                x, y = xy[0::2], xy[1::2]
                tol = COCO_POLYGON_TOLERANCE
                outside = (x < -tol) | (x > width + tol) | (y < -tol) | (y > height + tol)
                if outside.any():
                    k = int(np.flatnonzero(outside)[0])
                    raise CocoAnnotationError(
                        f"{where}: polygon vertex ({x[k]:g}, {y[k]:g}) lies outside the "
                        f"{width}x{height} (width x height) image"
                    )
            if not segm:
                return np.zeros((height, width), bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if [int(v) for v in segm["size"]] != [height, width]:
                raise CocoAnnotationError(
                    f"{where}: RLE size {segm['size']} (height, width) differs from the "
                    f"image's [{height}, {width}]"
                )
            if isinstance(segm["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(segm, height, width)
            else:  # compressed RLE (str or bytes)
                rle = segm
        else:
            raise CocoAnnotationError(
                f"{where}: segmentation must be polygons or an RLE, got {str(segm)[:100]}"
            )
        return mask_utils.decode(rle).astype(bool)
    except CocoAnnotationError:
        raise
    except (ValueError, TypeError) as e:
        raise CocoAnnotationError(f"{where}: cannot decode the segmentation: {e}") from e


def coco_masks(
    image: dict, annotations: Sequence[dict], category_index: dict[int, int], path: str
) -> tuple[np.ndarray, np.ndarray]:
    """(instance ids, class ids) uint8 `[H, W]` of one image's annotations.

    Crowd annotations (`iscrowd` = 1) are void (`COCO_VOID`) in both masks, as COCO's own
    evaluation ignores them. Non-crowd annotations become instances `1..n` in file order, with
    class `category_index[category_id] + 1`; they are painted over the void (a crowd region
    often contains people annotated one by one) and over each other from the largest to the
    smallest, so a small object on a large one stays visible (COCO's instance masks overlap;
    one id per pixel has to choose).

    Raises:
      CocoAnnotationError: a polygon outside the image, an undecodable segmentation, more than
        `COCO_MAX_INSTANCES` instances.
    """
    h, w = int(image["height"]), int(image["width"])
    instance = np.zeros((h, w), np.uint8)
    classes = np.zeros((h, w), np.uint8)
    objects = []
    for ann in annotations:
        where = f"{path}: annotation {ann['id']} (image {image['file_name']})"
        m = _annotation_mask(ann, h, w, where)
        if ann.get("iscrowd", 0):
            instance[m] = COCO_VOID
            classes[m] = COCO_VOID
        else:
            objects.append((m, category_index[ann["category_id"]] + 1))
    if len(objects) > COCO_MAX_INSTANCES:
        raise CocoAnnotationError(
            f"{path}: image {image['file_name']} has {len(objects)} instances; 8-bit instance "
            f"masks hold at most {COCO_MAX_INSTANCES}"
        )
    areas = [int(m.sum()) for m, _ in objects]
    # Stable sort: equal areas keep file order.
    for i in sorted(range(len(objects)), key=lambda i: -areas[i]):
        m, c = objects[i]
        instance[m] = i + 1
        classes[m] = c
    return instance, classes


class CocoFolder(tfds.core.GeneratorBasedBuilder, skip_registration=_SKIP_REGISTRATION):
    """A folder of images with COCO instance annotations as TFDS (instance and class masks).

    Features: `image`, `image/filename`, `image/id` (the COCO id), `instance_mask` and
    `class_mask` (Image (H, W, 1) uint8 PNG): 0 background, instances `1..n` / classes `c + 1`
    (c: index of the category in id order, names in `metadata['categories']`), 255 void
    (`iscrowd` regions; `common.data.void`'s 8-bit default, so every reader ignores them).
    """

    name = "coco_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    LOCAL_GENERATION = True

    def __init__(self, **kwargs):
        self._splits: dict[str, CocoSplit] = {}
        self._skips = _SkipCounter()
        super().__init__(**kwargs)

    def coco_split(self, split: str) -> CocoSplit:
        if split not in self._splits:
            self._splits[split] = read_coco_annotations(self.builder_config.annotations[split])
        return self._splits[split]

    @property
    def categories(self) -> list[tuple[int, str]]:
        """The categories, the same in every split's file (else an error naming both files)."""
        splits = sorted(self.builder_config.annotations)
        first = self.coco_split(splits[0])
        for split in splits[1:]:
            other = self.coco_split(split)
            if other.categories != first.categories:
                raise CocoAnnotationError(
                    f"the categories of {other.path} differ from those of {first.path}; class "
                    "ids must mean the same in every split"
                )
        return first.categories

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            "image/id": tfds.features.Scalar(dtype=np.int64),
            "instance_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "class_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        }
        categories = [
            {"id": int(i), "name": n, "class_mask_value": k + 1}
            for k, (i, n) in enumerate(self.categories)
        ]
        return self.dataset_info_from_configs(
            description="Images with COCO-format instance annotations.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(
                images=dict(config.images),
                annotations=dict(config.annotations),
                categories=categories,
                num_classes=len(categories),
                void_label=COCO_VOID,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in self.builder_config.images}

    def _generate_examples(self, split: str):
        from PIL import Image

        coco = self.coco_split(split)
        category_index = {cid: k for k, (cid, _) in enumerate(self.categories)}
        root = self.builder_config.images[split]
        for record in coco.images:
            path = os.path.join(root, record["file_name"])
            if not os.path.isfile(path):
                raise CocoAnnotationError(
                    f"{coco.path}: image {record['id']} names {record['file_name']}, but "
                    f"{path} does not exist"
                )
            try:
                image = _open_image(path)
            except CorruptFileError as e:
                if not self.builder_config.skip_corrupt:
                    raise
                self._skips.add(split, path, e)
                continue
            if (image.width, image.height) != (record["width"], record["height"]):
                raise CocoAnnotationError(
                    f"{coco.path}: image {record['id']} is {record['width']}x{record['height']} "
                    f"(width x height) in the annotations but {path} is "
                    f"{image.width}x{image.height}"
                )
            instance, classes = coco_masks(
                record, coco.annotations.get(record["id"], []), category_index, coco.path
            )
            masks = {}
            for key, ids in (("instance_mask", instance), ("class_mask", classes)):
                out = io.BytesIO()
                Image.fromarray(ids, mode="L").save(out, format="PNG")
                masks[key] = io.BytesIO(out.getvalue())
            yield (
                record["file_name"],
                {
                    "image": io.BytesIO(_image_bytes(image, path)),
                    "image/filename": record["file_name"],
                    "image/id": int(record["id"]),
                    **masks,
                },
            )
        self._skips.write(self.info.metadata)


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _split_paths(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    """`[PATH]` or `[SPLIT=PATH, ...]` -> {split: path} (a bare path is the `train` split)."""
    out: dict[str, str] = {}
    for value in values or []:
        split, sep, path = value.partition("=")
        split, path = (split, path) if sep else ("train", value)
        split = SPLIT_DIRS.get(split, split)
        if split in out:
            raise ValueError(f"{flag}: split {split!r} given twice")
        out[split] = path
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m common.data.folder_builders {images,videos} --root_dir R --data_dir D ...` or
    `... coco --images [SPLIT=]DIR --annotations [SPLIT=]FILE --data_dir D ...`."""
    import argparse

    parser = argparse.ArgumentParser(description="Build a TFDS dataset from a folder.")
    parser.add_argument("kind", choices=["images", "videos", "coco"])
    parser.add_argument("--root_dir", default=None, help="images, videos: the folder")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--name", default=None, help="config name (default: folder name)")
    parser.add_argument("--skip_corrupt", action="store_true")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--max_frames", type=int, default=None)
    parser.add_argument("--resize", default=None, help="SHORT_SIDE or HEIGHTxWIDTH")
    parser.add_argument(
        "--images", action="append", help="coco: [SPLIT=]DIR of the images (repeat per split)"
    )
    parser.add_argument(
        "--annotations", action="append", help="coco: [SPLIT=]instances JSON (repeat per split)"
    )
    from common import console

    args = console.parse_quietly(parser, argv)
    if args.kind == "coco":
        images = _split_paths(args.images, "--images")
        annotations = _split_paths(args.annotations, "--annotations")
        if not images or not annotations:
            parser.error("coco needs --images and --annotations")
        name = args.name or _default_config_name(images.get("train", next(iter(images.values()))))
        config = CocoFolderConfig(
            name=name, images=images, annotations=annotations, skip_corrupt=args.skip_corrupt
        )
        builder = CocoFolder(config=config, data_dir=args.data_dir)
    elif not args.root_dir:
        parser.error(f"{args.kind} needs --root_dir")
    elif args.kind == "images":
        name = args.name or _default_config_name(args.root_dir)
        config = ImageFolderConfig(
            name=name, root_dir=args.root_dir, skip_corrupt=args.skip_corrupt
        )
        builder = FolderImages(config=config, data_dir=args.data_dir)
    else:
        name = args.name or _default_config_name(args.root_dir)
        resize = None
        if args.resize:
            resize = (
                tuple(int(x) for x in args.resize.lower().split("x"))
                if "x" in args.resize.lower()
                else int(args.resize)
            )
        config = VideoFolderConfig(
            name=name,
            root_dir=args.root_dir,
            fps=args.fps,
            max_frames=args.max_frames,
            resize=resize,
            skip_corrupt=args.skip_corrupt,
        )
        builder = FolderVideos(config=config, data_dir=args.data_dir)
    builder.download_and_prepare()
    print(f"{builder.info.full_name} ready in {builder.data_dir}")
    skipped = builder.info.metadata.get("num_skipped", 0)
    if skipped:
        print(f"  skipped {skipped} corrupt files (see metadata.json)")


if __name__ == "__main__":
    from common.data import folder_builders

    folder_builders.main()
