"""Embedded datasets: synthetic_scenes and synthetic_videos (rendering, TFDS builders, FH rule)."""

import functools
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow_datasets as tfds
from skimage.segmentation import felzenszwalb

from common.data import procedural, segmentation
from common.data.synthetic_scenes import SyntheticScenes, SyntheticScenesConfig
from common.data.synthetic_videos import SyntheticVideos, SyntheticVideosConfig
from tests import helpers


def _small_scenes(name="small", **kwargs):
    sizes = dict(num_train=12, num_validation=4, num_test=4)
    sizes.update(kwargs)
    return SyntheticScenesConfig(name=name, **sizes)


def _build(builder_cls, config, data_dir, **kwargs):
    builder = builder_cls(config=config, data_dir=str(data_dir), **kwargs)
    builder.download_and_prepare()
    return builder


def _records(builder, split):
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    return list(tfds.as_numpy(dataset))


def _assert_same_records(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------


def _check_scene(scene):
    ids = np.unique(scene.instance_mask)
    n = len(scene.instance_classes)
    # Ids are exactly 1..n: every kept object shows, no fully occluded object has an id.
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))
    for k in range(1, n + 1):
        classes = np.unique(scene.class_mask[scene.instance_mask == k])
        assert classes.tolist() == [scene.instance_classes[k - 1] + 1]
    assert np.array_equal(scene.instance_mask == 0, scene.class_mask == 0)
    present = np.unique(scene.class_mask)
    expected = np.zeros(procedural.NUM_CLASSES, dtype=bool)
    expected[present[present > 0] - 1] = True
    np.testing.assert_array_equal(scene.labels, expected)
    areas = np.bincount(scene.class_mask.ravel(), minlength=procedural.NUM_CLASSES + 1)[1:]
    assert scene.label == int(np.argmax(areas))
    assert scene.labels[scene.label]


@pytest.mark.parametrize("style", procedural.STYLES)
def test_scenes_masks_and_labels_agree(style):
    counts = []
    for i in range(60):
        scene = procedural.render_scene(np.random.default_rng([3, 0, i]), 64, style=style)
        _check_scene(scene)
        counts.append(len(scene.instance_classes))
    most = procedural.SCENE_MAX_OBJECTS[style]
    assert min(counts) >= 1 and max(counts) <= most and len(set(counts)) >= min(4, most)


def test_natural_scenes_centre_one_main_object():
    # The 4.0.0 layout: id 1 (painted first) is the main object, large and central, and the
    # image label (majority class by visible area) is its class, as on an ImageNet photo; the
    # smaller objects painted over it occlude it without hiding it.
    area, central = [], []
    for i in range(100):
        scene = procedural.render_scene(np.random.default_rng([0, 0, i]), 64, style="natural")
        main = scene.instance_mask == 1
        assert scene.label == scene.instance_classes[0]
        area.append(main.mean())
        ys, xs = np.nonzero(main)
        central.append(abs(ys.mean() - 31.5) < 16 and abs(xs.mean() - 31.5) < 16)
        if len(scene.instance_classes) > 1:  # every other object is smaller than the main one
            others = np.bincount(scene.instance_mask.ravel())[2:]
            assert others.max() < main.sum()
    # A disc of radius 0.3-0.45 covers 28-64% of the image; thin shapes (ring, cross, star)
    # and occlusion less, but never under ~5%.
    assert np.mean(area) > 0.2 and np.min(area) > 0.05
    assert np.mean(central) >= 0.95


def test_scene_occluded_objects_are_dropped(monkeypatch):
    # Two identical discs at the same place: the lower one is fully hidden and must vanish.
    real = procedural.sample_object

    def same_disc(rng, size, class_id=None, **kwargs):
        obj = real(rng, size, class_id=0, **kwargs)
        obj.cx = obj.cy = size / 2
        obj.radius = size / 5
        return obj

    monkeypatch.setattr(procedural, "sample_object", same_disc)
    scene = procedural.render_scene(np.random.default_rng(0), 64, min_objects=3, max_objects=3)
    assert scene.instance_classes.tolist() == [0]
    assert np.unique(scene.instance_mask).tolist() == [0, 1]


def test_every_class_is_drawn_and_distinct():
    assert procedural.NUM_CLASSES >= 10
    assert len(set(procedural.CLASS_NAMES)) == procedural.NUM_CLASSES
    u, v = np.meshgrid(np.linspace(-1.1, 1.1, 33), np.linspace(-1.1, 1.1, 33))
    masks = [procedural.shape_mask(c, u, v) for c in range(procedural.NUM_CLASSES)]
    for i, a in enumerate(masks):
        assert 0.05 < a.mean() < 0.9
        for b in masks[i + 1 :]:
            assert (a != b).mean() > 0.02  # no two shape families coincide


def test_default_fh_settings_give_several_segments():
    assert segmentation.default_fh_settings(64, 64) == ((29.0, 29),)
    assert segmentation.default_fh_settings(224, 224) == ((358.0, 358),)
    counts = []
    for i in range(40):
        # The legacy scenes: few flat regions, the case where too large a scale merges them all.
        scene = procedural.render_scene(np.random.default_rng([0, 0, i]), 64, style="legacy")
        ids = segmentation.felzenszwalb_ids(scene.image, ((29.0, 29),))
        counts.append(int(ids.max()) + 1)
    # skimage's defaults (1000, 1000) would give a single segment on every 64 px image.
    assert 5 <= np.median(counts) <= 15
    assert np.mean([3 <= c <= 25 for c in counts]) >= 0.8


def _instance_hue_bins(scenes, bins: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(class, bin of the circular mean hue) of every instance with >= 20 visible pixels; the
    mean weights each pixel's hue vector by its saturation (grey pixels carry no hue)."""
    from skimage.color import rgb2hsv

    classes, hue_bins = [], []
    for scene in scenes:
        hsv = rgb2hsv(scene.image)
        vec = hsv[..., 1] * np.exp(2j * np.pi * hsv[..., 0])
        for k, c in enumerate(scene.instance_classes, start=1):
            inside = scene.instance_mask == k
            if inside.sum() >= 20:
                mean_hue = (np.angle(vec[inside].mean()) / (2 * np.pi)) % 1.0
                classes.append(c)
                hue_bins.append(min(int(mean_hue * bins), bins - 1))
    return np.asarray(classes), np.asarray(hue_bins)


def test_natural_classes_are_colour_independent():
    # A chi-square test of independence between an instance's class and its mean hue (6 bins)
    # over the instances of 400 scenes (the `tiny` train split's renders and more). Colours are
    # drawn independently of the class, so independence must not be rejected at the 0.1% level
    # (the data are fixed by the seeds: this is one draw, not a flaky test). The legacy generator
    # (a fixed hue per class) is rejected overwhelmingly: the test has the power to see a link.
    from scipy.stats import chi2_contingency

    def p_value(style):
        scenes = [
            procedural.render_scene(np.random.default_rng([0, 0, i]), 64, style=style)
            for i in range(400)
        ]
        classes, hue_bins = _instance_hue_bins(scenes)
        table = np.zeros((procedural.NUM_CLASSES, 6))
        np.add.at(table, (classes, hue_bins), 1)
        assert table.sum() >= 600 and table.min() >= 0  # enough instances for the chi-square
        return chi2_contingency(table).pvalue

    assert p_value("natural") > 1e-3
    assert p_value("legacy") < 1e-30


def test_natural_render_is_a_function_of_the_generator_only():
    # Same generator state, same scene (the texture caches add no hidden state).
    a = procedural.render_scene(np.random.default_rng([5, 1, 7]), 64, style="natural")
    procedural.render_scene(np.random.default_rng(123), 64, style="natural")  # draws in between
    b = procedural.render_scene(np.random.default_rng([5, 1, 7]), 64, style="natural")
    for field in ("image", "instance_mask", "class_mask", "instance_classes", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = procedural.render_scene(np.random.default_rng([5, 1, 8]), 64, style="natural")
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("style", procedural.STYLES)
def test_clip_ids_constant_over_time(style):
    for i in range(4):
        clip = procedural.render_clip(np.random.default_rng([1, 0, i]), 48, 8, style=style)
        n = len(clip.instance_classes)
        assert clip.video.shape == (8, 48, 48, 3) and clip.instance_masks.shape == (8, 48, 48)
        present = np.unique(clip.instance_masks)
        np.testing.assert_array_equal(present[present > 0], np.arange(1, n + 1))
        # An object keeps its colour from frame to frame (up to the lighting drift): the mean
        # colour of id k changes smoothly, which a swap of ids between frames would break.
        for k in range(1, n + 1):
            means = [
                clip.video[t][clip.instance_masks[t] == k].mean(axis=0)
                for t in range(8)
                if (clip.instance_masks[t] == k).sum() > 20
            ]
            for a, b in zip(means, means[1:]):
                assert np.abs(a - b).max() < 40
        areas = np.zeros(procedural.NUM_CLASSES)
        for k, c in enumerate(clip.instance_classes, start=1):
            areas[c] += (clip.instance_masks == k).sum()
        assert clip.label == int(np.argmax(areas))
    # The camera pans and objects move: frames differ.
    assert np.abs(clip.video[0].astype(int) - clip.video[-1]).mean() > 1


# ---------------------------------------------------------------------------------------------
# synthetic_scenes builder.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", procedural.STYLES)
def test_scenes_builder_features_and_content(tmp_path, style):
    builder = _build(SyntheticScenes, _small_scenes(style=style), tmp_path, num_workers=1)
    features = builder.info.features
    assert features["image"].shape == (64, 64, 3)
    assert features["instance_mask"].shape == (64, 64, 1)
    assert features["class_mask"].shape == (64, 64, 1)
    assert features["labels"].shape == (procedural.NUM_CLASSES,)
    assert features["labels"].np_dtype == np.bool_
    assert features["label"].num_classes == procedural.NUM_CLASSES
    assert features["fh_masks"].shape == (1, 64, 64)
    assert features["fh_masks"].np_dtype == np.uint8
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 12,
        "validation": 4,
        "test": 4,
    }
    for split_id, split in enumerate(("train", "validation", "test")):
        # Records come shuffled by key: match each one to the renderer's output by its pixels.
        n = builder.info.splits[split].num_examples
        scenes = [
            procedural.render_scene(np.random.default_rng([0, split_id, i]), 64, style=style)
            for i in range(n)
        ]
        by_image = {scene.image.tobytes(): scene for scene in scenes}
        records = _records(builder, split)
        assert len(records) == n
        for ex in records:
            scene = by_image.pop(ex["image"].tobytes())  # KeyError: image differs from renderer
            np.testing.assert_array_equal(ex["instance_mask"][..., 0], scene.instance_mask)
            np.testing.assert_array_equal(ex["class_mask"][..., 0], scene.class_mask)
            np.testing.assert_array_equal(ex["labels"], scene.labels)
            assert ex["label"] == scene.label
            np.testing.assert_array_equal(
                ex["fh_masks"][0], felzenszwalb(ex["image"], scale=29, sigma=0.8, min_size=29)
            )


def test_scenes_deterministic_across_runs_and_workers(tmp_path):
    # Two workers against one: same records, so generation order and parallelism do not matter.
    # The natural style: its workers load the texture sources themselves (no shared state).
    config = functools.partial(_small_scenes, num_train=80, style="natural")
    a = _build(SyntheticScenes, config(), tmp_path / "a", num_workers=2)
    b = _build(SyntheticScenes, config(), tmp_path / "b", num_workers=1)
    for split in ("train", "test"):
        _assert_same_records(_records(a, split), _records(b, split))
    c = _build(SyntheticScenes, config(seed=1), tmp_path / "c", num_workers=1)
    images_a = {ex["image"].tobytes() for ex in _records(a, "train")}
    images_c = {ex["image"].tobytes() for ex in _records(c, "train")}
    assert not images_a & images_c


def test_worker_pool_fails_instead_of_hanging_on_an_unguarded_script(tmp_path):
    # Spawned workers re-import the main script: without a `__main__` guard each worker starts
    # the pool again and dies. A `multiprocessing.Pool` then replaces it forever (a hang); ours
    # must stop with an error that says what to do.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from common.data import build_tools\n"
        "with build_tools.worker_pool(2) as pool:\n"
        "    print(list(build_tools.ordered_map(abs, range(-4, 4), pool=pool, chunksize=1)))\n"
    )
    env = {**os.environ, "PYTHONPATH": helpers.REPO}
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "RuntimeError: a worker process of the dataset build died" in run.stderr
    assert "if __name__ == '__main__':" in run.stderr
    # Guarded, the same code runs and keeps the order.
    script.write_text(
        "from common.data import build_tools\n"
        "if __name__ == '__main__':\n"
        "    with build_tools.worker_pool(2) as pool:\n"
        "        print(list(build_tools.ordered_map(abs, range(-4, 4), pool=pool, chunksize=1)))\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[4, 3, 2, 1, 0, 1, 2, 3]"


def test_scenes_splits_differ(tmp_path):
    builder = _build(SyntheticScenes, _small_scenes(), tmp_path, num_workers=1)
    train = {ex["image"].tobytes() for ex in _records(builder, "train")}
    test = {ex["image"].tobytes() for ex in _records(builder, "test")}
    assert not train & test


def test_fh_dtype_uint16_when_ids_exceed_255(tmp_path):
    # min_size 1 allows 4096 segments at 64 px, so the config stores uint16 ...
    config = _small_scenes(
        name="fine", num_train=2, num_validation=1, num_test=1, fh_settings=((1.0, 1), (29, 29))
    )
    assert config.fh_dtype == np.uint16
    builder = _build(SyntheticScenes, config, tmp_path, num_workers=1)
    assert builder.info.features["fh_masks"].np_dtype == np.uint16
    (ex,) = _records(builder, "validation")
    fine = felzenszwalb(ex["image"], scale=1.0, sigma=0.8, min_size=1)
    # ... and a noisy 64 px image really has more than 256 segments, stored without wrapping.
    assert fine.max() > 255
    np.testing.assert_array_equal(ex["fh_masks"][0], fine)
    np.testing.assert_array_equal(
        ex["fh_masks"][1], felzenszwalb(ex["image"], scale=29, sigma=0.8, min_size=29)
    )


def test_fh_dtype_rule_and_overflow_errors():
    assert segmentation.fh_dtype_for_size(64, 64, ((29, 29),)) == np.uint8
    assert segmentation.fh_dtype_for_size(64, 64, ((29, 29), (1, 15))) == np.uint16
    assert segmentation.fh_dtype_for_size(224, 224, ((1, 1),)) == np.uint16
    with pytest.raises(segmentation.FhOverflowError, match="larger min_size"):
        segmentation.fh_dtype_for_size(512, 512, ((1, 1),))
    ids = np.array([[0, 255], [256, 3]])
    with pytest.raises(segmentation.FhOverflowError, match="256.*record img_7.*uint8"):
        segmentation.cast_ids(ids, np.uint8, record="img_7")
    assert segmentation.cast_ids(ids, np.uint16).dtype == np.uint16
    # The bound the rule relies on: FH never returns more than H * W // min_size segments.
    noisy = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for min_size in (1, 3, 7, 20):
        n = felzenszwalb(noisy, scale=1, sigma=0.8, min_size=min_size).max() + 1
        assert n <= segmentation.max_segments(40, 40, min_size)


def test_scenes_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticScenesConfig(name="x", image_size=256)
    with pytest.raises(ValueError, match="at least one"):
        SyntheticScenesConfig(name="x", num_test=0)
    assert SyntheticScenesConfig(name="x", image_size=224).fh_settings == ((358.0, 358),)
    configs = {c.name: c for c in SyntheticScenes.BUILDER_CONFIGS}
    assert (configs["tiny"].num_train, configs["tiny"].num_validation) == (256, 64)
    assert {configs[n].style for n in ("default", "tiny", "s224")} == {"natural"}
    assert {configs[n].style for n in ("legacy", "legacy_tiny", "legacy_s224")} == {"legacy"}

    def sizes(c):
        return (c.num_train, c.num_validation, c.num_test, c.image_size)

    assert sizes(configs["legacy_tiny"]) == sizes(configs["tiny"])
    # The natural default halves the training split (build time); legacy keeps 1.0.0's sizes.
    assert sizes(configs["default"]) == (8000, 1000, 1000, 64)
    assert sizes(configs["legacy"]) == (20000, 2000, 2000, 64)
    assert sizes(configs["legacy_s224"]) == (20000, 2000, 2000, 224)
    with pytest.raises(ValueError, match="style"):
        SyntheticScenesConfig(name="x", style="photo")


# ---------------------------------------------------------------------------------------------
# synthetic_videos builder.
# ---------------------------------------------------------------------------------------------


def test_tiny_videos_are_the_renders(data_dir):
    # The `tiny` config (natural since 3.0.0), built in the session's data_dir that the VITO
    # tests and notebooks read too (one build): the validation and test records are the renders
    # of (seed, split, index), with the recorded frame rate (the train split goes through the
    # same code with split id 0). So a rebuild is identical: the renders are a function of those
    # alone (test_natural_clip_is_a_function_of_seed_split_and_index).
    import ml_collections

    from common.data import loading

    data = ml_collections.ConfigDict({"name": "synthetic_videos/tiny", "data_dir": data_dir,
                                      "split": "train", "build_if_missing": True})  # fmt: skip
    loading.ensure_dataset(data)
    builder = loading.get_builder(data)
    features = builder.info.features
    assert features["video"].shape == (8, 64, 64, 3)
    assert features["instance_masks"].shape == (8, 64, 64)
    assert features["instance_masks"].np_dtype == np.uint8
    assert features["fps"].np_dtype == np.float32
    assert builder.info.metadata["style"] == "natural" and builder.info.metadata["fps"] == 4.0
    for split_id, split in ((1, "validation"), (2, "test")):
        records = _records(builder, split)
        assert len(records) == 8
        clips = [
            procedural.render_clip(np.random.default_rng([0, split_id, i]), 64, 8, style="natural")
            for i in range(8)
        ]
        for ex in records:
            matches = [c for c in clips if np.array_equal(c.video, ex["video"])]
            assert len(matches) == 1  # PNG frames: lossless
            np.testing.assert_array_equal(ex["instance_masks"], matches[0].instance_masks)
            assert ex["label"] == matches[0].label
            assert ex["fps"] == np.float32(4.0) and ex["fps"].dtype == np.float32


# SHA-256 of three legacy clips (seed 0, split 1, indices 0..2, 8 frames of 64 px: video, masks,
# instance classes, label) rendered by the 1.0.0 generator, the `procedural.py` of commit
# ba82136^ (before 2.0.0 added the natural style): `legacy` and `legacy_tiny` must keep it.
LEGACY_1_0_0_CLIPS_SHA256 = "3ff8f3ec24adee91be496e6cbaf6c39ffa5c3683382332d4ba2e3092a47011ea"


def test_legacy_clips_are_the_1_0_0_clips():
    import hashlib

    digest = hashlib.sha256()
    for i in range(3):
        clip = procedural.render_clip(np.random.default_rng([0, 1, i]), 64, 8, style="legacy")
        for part in (clip.video, clip.instance_masks, clip.instance_classes):
            digest.update(part.tobytes())
        digest.update(bytes([clip.label]))
    assert digest.hexdigest() == LEGACY_1_0_0_CLIPS_SHA256
    configs = {c.name: c for c in SyntheticVideos.BUILDER_CONFIGS}
    assert configs["legacy"].style == configs["legacy_tiny"].style == "legacy"


def test_natural_clips_are_colour_independent():
    # The image test (test_natural_classes_are_colour_independent) on clips: class vs mean hue
    # (6 bins) of every instance over all its frames, 400 two-frame natural clips (~800
    # instances); independence must not be rejected at the 0.1% level (one fixed draw). The
    # legacy clips are rejected overwhelmingly even from 60 clips: the statistic sees a link
    # through the lighting drift and gains.
    from scipy.stats import chi2_contingency

    def p_value(style, count, min_instances):
        clips = [
            procedural.render_clip(np.random.default_rng([0, 0, i]), 64, 2, style=style)
            for i in range(count)
        ]
        # A clip's frames stacked as one tall image: each instance's pixels over the clip.
        as_scenes = [
            SimpleNamespace(
                image=c.video.reshape(-1, 64, 3),
                instance_mask=c.instance_masks.reshape(-1, 64),
                instance_classes=c.instance_classes,
            )
            for c in clips
        ]
        classes, hue_bins = _instance_hue_bins(as_scenes)
        table = np.zeros((procedural.NUM_CLASSES, 6))
        np.add.at(table, (classes, hue_bins), 1)
        assert table.sum() >= min_instances  # enough instances for the chi-square
        return chi2_contingency(table).pvalue

    assert p_value("natural", 400, min_instances=600) > 1e-3
    assert p_value("legacy", 60, min_instances=150) < 1e-30


def test_natural_clip_is_a_function_of_seed_split_and_index():
    kwargs = dict(image_size=32, num_frames=3, max_objects=5, encoding="png", style="natural")
    a = procedural.clip_record(4, seed=2, split_id=1, **kwargs)
    # Renders in between (other textures, other clips): no hidden state.
    procedural.render_clip(np.random.default_rng(9), 32, 3, style="natural")
    b = procedural.clip_record(4, seed=2, split_id=1, **kwargs)
    assert a["video"] == b["video"] and a["label"] == b["label"]
    np.testing.assert_array_equal(a["instance_masks"], b["instance_masks"])
    for other in (dict(seed=3, split_id=1, index=4), dict(seed=2, split_id=0, index=4),
                  dict(seed=2, split_id=1, index=5)):  # fmt: skip
        index = other.pop("index")
        c = procedural.clip_record(index, **other, **kwargs)
        assert c["video"] != a["video"]


def test_videos_config_validation():
    with pytest.raises(ValueError, match="encoding"):
        SyntheticVideosConfig(name="x", encoding="gif")
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticVideosConfig(name="x", num_frames=0)
    with pytest.raises(ValueError, match="fps must be positive"):
        SyntheticVideosConfig(name="x", fps=0.0)
    configs = {c.name: c for c in SyntheticVideos.BUILDER_CONFIGS}
    assert set(configs) == {"default", "tiny", "legacy", "legacy_tiny"}
    assert configs["default"].style == configs["tiny"].style == "natural"
    assert {c.fps for c in configs.values()} == {4.0}

    def sizes(c):
        return (c.num_frames, c.num_train, c.num_validation, c.num_test, c.image_size)

    assert sizes(configs["default"]) == sizes(configs["legacy"]) == (16, 2000, 200, 200, 64)
    assert sizes(configs["tiny"]) == sizes(configs["legacy_tiny"]) == (8, 32, 8, 8, 64)
