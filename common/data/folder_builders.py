"""TFDS builders for a folder of images (`folder_images`) and a folder of videos (`folder_videos`).

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
a palette PNG whose indices are the ids). Chosen over a parallel `masks/` tree because it works
unchanged with class and split directories. If any image has a mask, every image must have one;
the feature `mask` (Image (H, W, 1) uint8) is then added. A mask whose size differs from its
image is an error naming both files.

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


def scan_folder(root: str, extensions: Sequence[str], *, exclude_suffix: str | None = None):
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
    EXCLUDE_SUFFIX: str | None = None

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


# Run as a script, this file is also imported under its package name by `main` (TFDS reads the
# builder's package files), so only that copy registers the dataset names.
_SKIP_REGISTRATION = __name__ in ("__main__", "__mp_main__")


class FolderImages(_FolderBuilder, skip_registration=_SKIP_REGISTRATION):
    """A folder of JPEG/PNG images (optionally with masks and class directories) as TFDS."""

    name = "folder_images"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    EXTENSIONS = IMAGE_EXTENSIONS
    EXCLUDE_SUFFIX = MASK_SUFFIX
    LOCAL_GENERATION = True

    @property
    def has_masks(self) -> bool:
        root = self.builder_config.root_dir
        masks = set(_walk(root, (MASK_SUFFIX,)))
        images = [f for files in self.layout.files.values() for f in files]
        expected = {_mask_relpath(f) for f in images}
        orphans = sorted(masks - expected)
        if orphans:
            raise ValueError(
                f"mask {os.path.join(root, orphans[0])} has no image (expected "
                f"{os.path.join(root, orphans[0][: -len(MASK_SUFFIX)])}.jpg/.jpeg/.png)"
            )
        if masks and masks != expected:
            missing = sorted(f for f in images if _mask_relpath(f) not in masks)[0]
            raise ValueError(
                f"image {os.path.join(root, missing)} has no mask "
                f"{os.path.join(root, _mask_relpath(missing))}, while other images of "
                f"{root} have masks: give every image a mask or none"
            )
        return bool(masks)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            **self._common_features(),
        }
        if self.has_masks:
            features["mask"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
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
        if (image.format, image.mode) in _KEEP_AS_IS:
            with open(path, "rb") as f:
                encoded = f.read()
        else:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            encoded = buffer.getvalue()
        example = {"image": io.BytesIO(encoded)}
        if self.has_masks_cached:
            mask_path = path[: -len(os.path.splitext(path)[1])] + MASK_SUFFIX
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
            example["mask"] = io.BytesIO(buffer.getvalue())
        return example

    @property
    def has_masks_cached(self) -> bool:
        return "mask" in self.info.features


def _mask_relpath(image_relpath: str) -> str:
    return os.path.splitext(image_relpath)[0] + MASK_SUFFIX


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
# Command line.
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m common.data.folder_builders {images,videos} --root_dir R --data_dir D ...`."""
    import argparse

    parser = argparse.ArgumentParser(description="Build a TFDS dataset from a folder.")
    parser.add_argument("kind", choices=["images", "videos"])
    parser.add_argument("--root_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--name", default=None, help="config name (default: folder name)")
    parser.add_argument("--skip_corrupt", action="store_true")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--max_frames", type=int, default=None)
    parser.add_argument("--resize", default=None, help="SHORT_SIDE or HEIGHTxWIDTH")
    args = parser.parse_args(argv)
    name = args.name or _default_config_name(args.root_dir)
    if args.kind == "images":
        config = ImageFolderConfig(
            name=name, root_dir=args.root_dir, skip_corrupt=args.skip_corrupt
        )
        builder = FolderImages(config=config, data_dir=args.data_dir)
    else:
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
