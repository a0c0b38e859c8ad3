"""The void label (`common.data.void`): 255 in 8-bit masks is no object, no background, in no
area, in no loss, and never a DetCon sample; on constructed masks with hand-computed results
and on scikit-image's photographs with void outlines and void regions."""

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.segmentation
import tensorflow as tf
from PIL import Image

from common import masks
from common.data import void
from common.eval import dense_data, overlap, seg_probe


def test_settings():
    assert void.resolve("auto", np.uint8) == 255 and void.resolve("auto", tf.uint8) == 255
    assert void.resolve("auto", np.uint16) is None  # 16-bit masks may use every id
    assert void.resolve(7, np.uint16) == 7 and void.resolve("7", np.uint8) == 7
    assert void.resolve("none", np.uint8) is None and void.resolve(None, np.uint8) is None
    for bad in (0, -1, "void", 2.5, True):
        with pytest.raises(ValueError, match="void_label"):
            void.check_setting(bad)
    np.testing.assert_array_equal(void.to_ignore(np.array([0, 3, 255], np.uint8), 255), [0, 3, -1])
    ids = void.to_ignore_tf(tf.constant([[[0], [255]], [[4], [255]]], tf.uint8), "auto")
    np.testing.assert_array_equal(ids.numpy(), [[0, -1], [4, -1]])
    kept = void.to_ignore_tf(tf.constant([[0, 255]], tf.uint8), "none")
    np.testing.assert_array_equal(kept.numpy(), [[0, 255]])


# A 4 x 4 mask: object 1 (top-left 2 x 2) with a void outline, object 2 one pixel, and
# segments: 0 covers the object and its outline, 1 the rest.
RAW = np.array(
    [[1, 1, 255, 0],
     [1, 1, 255, 0],
     [255, 255, 255, 0],
     [0, 0, 0, 2]], np.uint8,
)  # fmt: skip
SEGMENTS = np.array(
    [[0, 0, 0, 1],
     [0, 0, 0, 1],
     [0, 0, 0, 1],
     [1, 1, 1, 1]], np.int32,
)  # fmt: skip


def _read(raw_masks, data_config, **kwargs):
    """One batch of `dense_label_batches` over in-memory examples (image + folder `mask`)."""
    examples = {
        "image": np.stack([np.zeros(m.shape + (3,), np.uint8) for m in raw_masks]),
        "mask": np.stack(raw_masks)[..., None],
    }
    ds = tf.data.Dataset.from_tensor_slices(examples)
    return next(
        dense_data.dense_label_batches(
            data_config, "train", batch_size=len(raw_masks), image_size=8, dataset=ds, **kwargs
        )
    )


def test_constructed_abo_by_hand():
    batch = _read([RAW], {"name": "unused"}, max_mask_size=4)
    np.testing.assert_array_equal(
        batch["instance_mask"][0], np.where(RAW == 255, -1, RAW.astype(int))
    )
    ov = overlap.best_overlaps(
        jnp.asarray(SEGMENTS[None]), jnp.asarray(batch["instance_mask"]), num_segments=2
    )
    s = np.asarray(overlap.discovery_sums(ov))
    # Object 1: segment 0 has 9 pixels, 5 of them void -> 4 counted, all object 1: IoU 1.
    # Object 2: segment 1's 7 pixels hold it: IoU 1/7. Two instances.
    assert s[2] == 2
    assert s[0] / s[2] == pytest.approx((1 + 1 / 7) / 2) and s[1] / s[2] == 0.5
    # void_label none (the old reading): 255 is a third instance and segment 0 spans 9
    # pixels: IoUs 4/9, 1/7, 5/9.
    raw = _read([RAW], {"name": "unused", "void_label": "none"}, max_mask_size=4)
    ov = overlap.best_overlaps(
        jnp.asarray(SEGMENTS[None]), jnp.asarray(raw["instance_mask"]), num_segments=2
    )
    s = np.asarray(overlap.discovery_sums(ov))
    assert s[2] == 3 and s[0] / s[2] == pytest.approx((4 / 9 + 1 / 7 + 5 / 9) / 3)
    # Another void id, per dataset: 2 is void, 255 an object.
    other = _read([RAW], {"name": "unused", "void_label": 2}, max_mask_size=4)
    np.testing.assert_array_equal(
        other["instance_mask"][0], np.where(RAW == 2, -1, RAW.astype(int))
    )
    with pytest.raises(ValueError, match="void_label"):
        _read([RAW], {"name": "unused", "void_label": "unknown"})


def _photo_masks(image, rng):
    """Instance mask of a photograph: 2-3 ellipses, each with a 2-px void outline (the PASCAL
    VOC style), and a void rectangle (a 'difficult' region)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    for i in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.1, 0.2) * h, rng.uniform(0.1, 0.2) * w
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        outline = (r <= 1) & (r > (1 - 2 / min(ry, rx)) ** 2)
        mask[r <= 1] = i + 1
        mask[outline] = 255
    mask[: h // 8, w // 2 : w // 2 + w // 6] = 255
    return mask


def _reference_overlaps(segments, raw, void_id):
    """Best IoU of every object, with the definitions written out (void in no area)."""
    keep = np.ones(raw.shape, bool) if void_id is None else raw != void_id
    ious = []
    for obj in np.unique(raw[keep]):
        if obj == 0:
            continue
        g = (raw == obj) & keep
        best = 0.0
        for seg in np.unique(segments):
            s = (segments == seg) & keep
            best = max(best, (g & s).sum() / (g | s).sum())
        ious.append(best)
    return ious


def test_photographs_with_void_outlines(tmp_path):
    from common.data.folder_builders import FolderImages, ImageFolderConfig

    rng = np.random.default_rng(0)
    root = tmp_path / "voc_like"
    root.mkdir()
    raws, segs = [], []
    for name in ("astronaut", "coffee", "chelsea"):
        photo = Image.fromarray(getattr(skimage.data, name)())
        photo = np.asarray(photo.resize((photo.width // 4, photo.height // 4)))
        raw = _photo_masks(photo, rng)
        Image.fromarray(photo).save(root / f"{name}.png")
        Image.fromarray(raw, mode="L").save(root / f"{name}_mask.png")
        raws.append(raw)
        segs.append(skimage.segmentation.felzenszwalb(photo, scale=100, min_size=20))
    FolderImages(
        config=ImageFolderConfig(name="voc", root_dir=str(root)), data_dir=str(tmp_path / "d")
    ).download_and_prepare()
    for void_label in ("auto", "none"):
        data = {"name": "folder_images/voc", "data_dir": str(tmp_path / "d"),
                "void_label": void_label}  # fmt: skip
        _check_photographs(data, raws, segs)


def _check_photographs(data, raws, segs):
    batch = next(dense_data.dense_label_batches(data, "train", batch_size=3, image_size=16,
                                                max_mask_size=160))  # fmt: skip
    # TFDS stores the records in its own order; the three photographs differ in size.
    shapes = [r.shape for r in raws]
    order = [shapes.index(tuple(int(v) for v in hw)) for hw in batch["mask_hw"]]
    assert sorted(order) == [0, 1, 2]
    canvas = np.full((3, 160, 160), -1, np.int32)
    for row, i in enumerate(order):
        h, w = raws[i].shape
        canvas[row, :h, :w] = segs[i]
    num_segments = int(canvas.max()) + 1
    ov = overlap.best_overlaps(
        jnp.asarray(canvas), jnp.asarray(batch["instance_mask"]), num_segments=num_segments
    )
    s = np.asarray(overlap.discovery_sums(ov))
    void_id = 255 if data["void_label"] == "auto" else None
    expected = [v for i in order for v in _reference_overlaps(segs[i], raws[i], void_id)]
    num_objects = sum(len(np.setdiff1d(np.unique(r), [0, 255])) for r in raws)
    # With void: one instance per drawn object. Without: one more per image (the outline).
    assert s[2] == len(expected) == num_objects + (0 if void_id else 3)
    assert s[0] / s[2] == pytest.approx(np.mean(expected), rel=1e-5)
    assert s[1] / s[2] == pytest.approx(np.mean(np.asarray(expected) > 0.5))


def test_seg_probe_loss_and_miou_ignore_void():
    labels = jnp.asarray([[[0, 1, -1]]])
    # CE: ln 2 (uniform), ln(4/3) (p = 3/4); the void pixel's logits would cost 200.
    logits = jnp.asarray([[[[0.0, 0.0], [0.0, np.log(3.0)], [-100.0, 100.0]]]])
    loss = seg_probe.probe_loss(logits, labels, jnp.asarray([True]), 2)
    assert float(loss) == pytest.approx((np.log(2) + np.log(4 / 3)) / 2, rel=1e-6)
    # mIoU: prediction [0, 1, 1] against [0, 1, void]: both classes perfect.
    conf = overlap.confusion_matrix(labels, jnp.asarray([[[0, 1, 1]]]), 2)
    np.testing.assert_array_equal(np.asarray(conf), [[1, 0], [0, 1]])
    assert overlap.mean_iou(conf)[0] == 1.0


def test_detcon_never_samples_void():
    # Two 2 x 2 cells: the left holds three void pixels and one of object 3, the right void only.
    ids = jnp.asarray([[[-1, -1, -1, -1], [-1, 3, -1, -1]]])
    grid = masks.ids_to_grid(ids, 2, 256)
    np.testing.assert_array_equal(np.asarray(grid), [[[3, -1]]])
    sampled = masks.sample_ids(jnp.asarray(np.random.default_rng(0).integers(0, 9, 2), jnp.uint32),
                               grid, 16)  # fmt: skip
    assert set(np.asarray(sampled).ravel()) == {3}
    np.testing.assert_array_equal(np.asarray(masks.masks_from_ids(grid, sampled))[0, 0], [1, 0])
    # Read raw (no void), 255 would be an id of its own and would be sampled.
    raw = masks.ids_to_grid(jnp.where(ids < 0, 255, ids), 2, 256)
    np.testing.assert_array_equal(np.asarray(raw), [[[255, 255]]])


# ---------------------------------------------------------------------------------------------
# Training pipelines: void is id -1 in the views' masks, so DetCon never samples it.


def _void_images():
    """Two 16 x 16 images: object 1 (left half), a void outline column, object 2 (right)."""
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :7] = 1
    mask[:, 7] = 255
    mask[:, 8:] = 2
    return {
        "image": np.zeros((2, 16, 16, 3), np.uint8),
        "instance_mask": np.stack([mask, mask])[..., None],
    }


@pytest.mark.parametrize("void_label, expected", [("auto", {-1, 1, 2}), ("none", {1, 2, 255})])
def test_pretrain_views_give_void_id_minus_one(void_label, expected):
    from common.data import pipeline

    data = {"mask_source": "gt", "image_size": 16, "crop_scale": (1.0, 1.0),
            "crop_ratio": (1.0, 1.0), "shuffle_buffer": 1, "void_label": void_label}  # fmt: skip
    ds = tf.data.Dataset.from_tensor_slices(_void_images())
    batch = next(pipeline.make_pretrain_iterator(data, global_batch_size=2, seed=0, dataset=ds))
    for key in ("mask1", "mask2"):
        assert set(np.unique(batch[key])) == expected
    # DetCon's sampling on the training masks: only the two objects, never the void.
    grid = masks.ids_to_grid(jnp.asarray(batch["mask1"]), 1, 256)
    sampled = masks.sample_ids(jnp.asarray([0, 7], jnp.uint32), grid, 64)
    assert set(np.asarray(sampled).ravel()) == expected - {-1}


def test_video_pairs_give_void_id_minus_one():
    from common.data import pipeline

    frames = np.zeros((1, 4, 16, 16, 3), np.uint8)
    clip = np.zeros((1, 4, 16, 16), np.uint8)
    clip[:, :, 2:10, 2:10] = 3
    clip[:, :, 10:12, :] = 255
    ds = tf.data.Dataset.from_tensor_slices({"video": frames, "instance_masks": clip})
    data = {"kind": "video_pairs", "mask_source": "gt", "image_size": 16,
            "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "shuffle_buffer": 1,
            "min_offset": 1, "max_offset": 2}  # fmt: skip
    batch = next(pipeline.make_video_pair_iterator(data, global_batch_size=1, seed=0, dataset=ds))
    for key in ("mask1", "mask2"):
        assert set(np.unique(batch[key])) == {-1, 0, 3}
