"""Host input pipelines: geometry of views and masks, process slices, resume, videos, eval, bad
records. Runs on tiny TFDS datasets built here (a few seconds) and on `tf.data.Dataset`s."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import config as data_config
from common.data import geometry, iterators, pipeline

H, W = 24, 32  # non-square, so that a height/width mix-up shows
N_TRAIN, N_VAL = 26, 7
NUM_CLASSES = 64  # label = record number, so batches tell which records they hold
# Maximally separated colours: a blend of two of them is never nearer a third than its parents.
PALETTE = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]], np.uint8
)


def scene(i: int) -> dict[str, np.ndarray]:
    """Background id 0 plus up to 5 rectangles; the image colour encodes the instance id."""
    rng = np.random.default_rng(i)
    ids = np.zeros((H, W), np.uint8)
    for k in range(1, 6):
        h, w = rng.integers(6, 14), rng.integers(6, 16)
        y, x = rng.integers(0, H - h), rng.integers(0, W - w)
        ids[y : y + h, x : x + w] = k
    fh = np.stack([ids, (ids + 7) % 11]).astype(np.uint8)  # two "FH" channels, told apart
    labels = np.zeros(NUM_CLASSES, bool)
    labels[i] = True
    return {
        "image": PALETTE[ids],
        "instance_mask": ids[..., None],
        "class_mask": (ids % 3)[..., None],
        "labels": labels,
        "label": i,
        "fh_masks": fh,
    }


class _TinyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tiny in-memory dataset; subclasses give `tiny_features()` and the generators."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a checksums file beside the builder's module through `importlib_resources`
    # (absent from the environment); these builders download nothing.
    code_path = None

    def tiny_features(self) -> dict:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(self.tiny_features())
        )


class PipelineTestScenes(_TinyBuilder):
    """The synthetic_scenes features of ARCHITECTURE.md, tiny."""

    def tiny_features(self):
        return {
            "image": tfds.features.Image(shape=(H, W, 3)),
            "instance_mask": tfds.features.Image(shape=(H, W, 1)),
            "class_mask": tfds.features.Image(shape=(H, W, 1)),
            "labels": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.bool_),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            # zlib, as synthetic_scenes stores them: decoded only after the skip
            "fh_masks": tfds.features.Tensor(
                shape=(2, H, W), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
            ),
        }

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(range(N_TRAIN)),
            "validation": self._generate_examples(range(N_VAL)),
        }

    def _generate_examples(self, records):
        for i in records:
            yield i, scene(i)


T_VIDEO = 6


def clip_frames(c: int, t: int) -> np.ndarray:
    """Frame t of clip c: a constant colour encoding (c, t), so any crop tells both."""
    return np.broadcast_to(np.array([40 * c, 40 * t, 200], np.uint8), (16, 20, 3))


class PipelineTestVideos(_TinyBuilder):
    """The synthetic_videos features, tiny: frames encoded as PNG, masks = frame number."""

    def tiny_features(self):
        return {
            "video": tfds.features.Video(shape=(T_VIDEO, 16, 20, 3)),
            "instance_masks": tfds.features.Tensor(
                shape=(T_VIDEO, 16, 20), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
            ),
            "label": tfds.features.ClassLabel(num_classes=8),
        }

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for c in range(4):
            video = np.stack([clip_frames(c, t) for t in range(T_VIDEO)])
            masks = np.broadcast_to(
                np.arange(T_VIDEO, dtype=np.uint8)[:, None, None], (T_VIDEO, 16, 20)
            )
            yield c, {"video": video, "instance_masks": masks, "label": c}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    PipelineTestScenes(data_dir=d).download_and_prepare()
    PipelineTestVideos(data_dir=d).download_and_prepare()
    return d


def config(data_dir, **kw):
    cfg = data_config.default_data_config()
    cfg.update(dict(name="pipeline_test_scenes", data_dir=data_dir, image_size=32))
    cfg.update(kw)
    return cfg


def take(it, n):
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Geometry.


def test_crop_window_distribution():
    """Windows stay inside the image; area fractions and aspects follow the configured ranges."""
    u = tf.random.stateless_uniform([4, 2000], [0, 1])  # the function broadcasts over draws
    y0, x0, h, w = geometry.sample_crop_window(u, 200, 300, (0.08, 1.0)).numpy()
    assert (y0 >= 0).all() and (y0 + h <= 200).all() and (x0 >= 0).all() and (x0 + w <= 300).all()
    assert (h >= 1).all() and (w >= 1).all()
    fracs, aspects = h * w / 60000, w / h
    assert fracs.min() >= 0.07 and fracs.max() <= 1.0
    # Clipping to the image only shrinks crops; unclipped ones keep their aspect in [3/4, 4/3].
    small = fracs < 0.4
    assert np.all((aspects[small] > 0.73) & (aspects[small] < 1.37))
    assert 0.4 < fracs.mean() < 0.6  # ~U(0.08, 1): mean 0.54, a little less after clipping
    assert 0.45 < (y0 / np.maximum(200 - h, 1))[h < 150].mean() < 0.55  # uniform offsets


def test_grid_and_center_crop():
    ids = geometry.grid_ids(6, 8, 2).numpy()
    assert ids[0, 0] == 0 and ids[0, 7] == 1 and ids[5, 0] == 2 and ids[5, 7] == 3
    assert (ids[:3, :4] == 0).all() and (ids[3:, 4:] == 3).all()
    y0, x0, h, w = geometry.center_crop_window(100, 200, 224, 32).numpy()
    assert h == w == int(224 / 256 * 100) and y0 == (100 - h + 1) // 2 and x0 == (200 - w + 1) // 2


# ---------------------------------------------------------------------------------------------
# Pretraining views.


def interior(ids: np.ndarray, radius: int = 2) -> np.ndarray:
    """True where every pixel within `radius` (Chebyshev) has the same id: bicubic taps reach
    2 source pixels, so there the resampled colour is a single segment's."""
    p = np.pad(ids, radius, mode="edge")
    ok = np.ones(ids.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            ok &= p[dy : dy + ids.shape[0], dx : dx + ids.shape[1]] == ids
    return ok


def decode_palette(view: np.ndarray) -> np.ndarray:
    d = ((view[..., None, :] * 255.0 - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("mask_source", ["gt", "fh"])
def test_mask_labels_the_same_pixels_as_the_view(data_dir, mask_source):
    """(a) After crop + flip the mask ids still sit on the pixels whose colour encodes them."""
    cfg = config(data_dir, mask_source=mask_source)
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=13, seed=3)
    agree = total = flips = 0
    for batch in take(it, 2):
        for r in range(13):
            rec = scene(int(batch["label"][r]))
            orig_ids = rec["instance_mask"][..., 0].astype(np.int32)
            inner = interior(orig_ids)
            for v in "12":
                # fh channel 0 of the test data is the instance id map itself
                mask = batch["mask" + v][r]
                window = tf.constant(geometry.box_to_window(batch["box" + v][r], H, W))
                keep = (
                    geometry.crop_resize_ids(
                        tf.constant(inner.astype(np.int32)), window, batch["flip" + v][r], 32
                    )
                    .numpy()
                    .astype(bool)
                )
                decoded = decode_palette(batch["view" + v][r])
                agree += int((decoded == mask)[keep].sum())
                total += int(keep.sum())
                flips += int(batch["flip" + v][r])
    assert total > 0.3 * 2 * 13 * 2 * 32 * 32
    assert agree / total >= 0.99
    assert 0 < flips < 52  # both flipped and unflipped views were checked


def test_views_are_reproduced_from_boxes_and_flips(data_dir):
    """(b) Resampling the original through the emitted box and flip gives the view again."""
    cfg = config(data_dir, mask_source="gt")
    batch = next(pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0))
    assert batch["view1"].shape == (8, 32, 32, 3) and batch["view1"].dtype == np.float32
    assert batch["mask1"].dtype == np.int32 and batch["box1"].dtype == np.float32
    assert batch["flip1"].dtype == np.int32 and batch["index"].dtype == np.int64
    for r in range(8):
        rec = scene(int(batch["label"][r]))
        for v in "12":
            y0, x0, h, w = geometry.box_to_window(batch["box" + v][r], H, W)
            crop = rec["image"][y0 : y0 + h, x0 : x0 + w].astype(np.float32)
            img = tf.image.resize(crop, [32, 32], method="bicubic").numpy()
            img = np.clip(img / 255.0, 0, 1)
            ids = rec["instance_mask"][y0 : y0 + h, x0 : x0 + w]
            ids = tf.image.resize(ids, [32, 32], method="nearest").numpy()[..., 0]
            if batch["flip" + v][r]:
                img, ids = img[:, ::-1], ids[:, ::-1]
            np.testing.assert_allclose(batch["view" + v][r], img, atol=1e-5)
            np.testing.assert_array_equal(batch["mask" + v][r], ids)
    # the views of one example are independent crops
    assert not np.allclose(batch["box1"], batch["box2"])


def test_grid_masks_are_transported(data_dir):
    cfg = config(data_dir, mask_source="grid", grid_size=2)
    batch = next(pipeline.make_pretrain_iterator(cfg, global_batch_size=4, seed=1))
    grid = geometry.grid_ids(H, W, 2)
    for r in range(4):
        window = tf.constant(geometry.box_to_window(batch["box1"][r], H, W))
        want = geometry.crop_resize_ids(grid, window, batch["flip1"][r], 32).numpy()
        np.testing.assert_array_equal(batch["mask1"][r], want)
    assert set(np.unique(batch["mask1"])) <= {0, 1, 2, 3}


def test_no_masks_for_none_and_errors(data_dir):
    batch = next(pipeline.make_pretrain_iterator(config(data_dir), global_batch_size=2, seed=0))
    assert "mask1" not in batch and set(batch) >= {"view1", "view2", "box1", "flip2", "label"}
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.make_pretrain_iterator(
            config(data_dir), global_batch_size=5, seed=0, process_index=0, process_count=2
        )
    with pytest.raises(ValueError, match="mask_source"):
        pipeline.make_pretrain_iterator(
            config(data_dir, mask_source="fhh"), global_batch_size=2, seed=0
        )


@pytest.mark.parametrize("source", ["tfds", "tf.data"])
def test_processes_read_disjoint_halves(data_dir, source):
    """(c) process 0 and 1 of 2 read disjoint slices that together are the whole split."""
    dataset = None
    if source == "tf.data":
        dataset = tf.data.Dataset.from_tensor_slices(
            {
                "image": np.stack([scene(i)["image"] for i in range(N_TRAIN)]),
                "label": np.arange(N_TRAIN),
            }
        )
    seen = []
    for p in range(2):
        it = pipeline.make_pretrain_iterator(
            config(data_dir),
            global_batch_size=N_TRAIN,
            seed=0,
            process_index=p,
            process_count=2,
            dataset=dataset,
        )
        first = next(it)  # local batch 13 = exactly this process's epoch
        assert len(set(first["label"].tolist())) == 13
        seen.append(set(first["label"].tolist()))
        assert set(next(it)["label"].tolist()) == seen[-1]  # next epoch, same slice
        assert np.all(first["index"] == np.arange(p * 13, p * 13 + 13))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(N_TRAIN))


def test_one_process_with_two_shards_reads_what_two_processes_read(data_dir):
    """With `num_shards` fixed, the global stream does not depend on how many processes read it:
    process p's rows are exactly rows [p*b, (p+1)*b) of the one-process batch."""
    kw = dict(global_batch_size=8, seed=3, start_step=2)
    single = pipeline.make_pretrain_iterator(config(data_dir, num_shards=2), **kw)
    procs = [
        pipeline.make_pretrain_iterator(config(data_dir), process_index=p, process_count=2, **kw)
        for p in range(2)
    ]
    for _ in range(3):
        whole = next(single)
        halves = [next(it) for it in procs]
        assert not set(halves[0]["index"].tolist()) & set(halves[1]["index"].tolist())
        for key in whole:
            np.testing.assert_array_equal(
                whole[key], np.concatenate([h[key] for h in halves]), err_msg=key
            )
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        pipeline.make_pretrain_iterator(
            config(data_dir, num_shards=3), process_index=0, process_count=2, **kw
        )


def test_resume_is_bitwise_identical(data_dir):
    """(d) Starting at step k gives exactly the batches of the run from 0 at step k, including
    batches that straddle an epoch boundary (26 records, batches of 5)."""
    cfg = config(data_dir, mask_source="fh", fh_index=1)
    full = take(pipeline.make_pretrain_iterator(cfg, global_batch_size=5, seed=7), 11)
    for k in (4, 5):
        resumed = take(
            pipeline.make_pretrain_iterator(cfg, global_batch_size=5, seed=7, start_step=k), 3
        )
        for a, b in zip(full[k:], resumed):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    epoch0 = np.concatenate([b["label"] for b in full])[:N_TRAIN]
    epoch1 = np.concatenate([b["label"] for b in full])[N_TRAIN : 2 * N_TRAIN]
    assert sorted(epoch0) == sorted(epoch1) == list(range(N_TRAIN))  # epochs are permutations
    assert not np.array_equal(epoch0, epoch1)  # ... reshuffled each epoch
    other = next(pipeline.make_pretrain_iterator(cfg, global_batch_size=5, seed=8))
    assert not np.array_equal(other["view1"], full[0]["view1"])
    # fh_index=1 selects the second stored segmentation
    assert set(np.unique(full[0]["mask1"])) <= {7, 8, 9, 10, 0, 1}


def test_cache_and_parallelism_do_not_change_the_stream(data_dir):
    cfg = config(data_dir, mask_source="gt")
    a = take(pipeline.make_pretrain_iterator(cfg, global_batch_size=6, seed=2), 6)
    cfg2 = config(data_dir, mask_source="gt", cache=True, num_parallel_calls=1, prefetch=1)
    b = take(pipeline.make_pretrain_iterator(cfg2, global_batch_size=6, seed=2), 6)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Videos.


def colour_of(view: np.ndarray) -> tuple[int, int]:
    c = np.round(view.reshape(-1, 3).mean(0) * 255).astype(int)
    return c[0] // 40, c[1] // 40


def test_video_pairs_from_tfds(data_dir):
    """(e) Two frames of one clip, offsets in range, masks of the same frames."""
    cfg = config(
        data_dir,
        name="pipeline_test_videos",
        mask_source="gt",
        min_offset=2,
        max_offset=3,
        crop_scale=(0.3, 1.0),
    )
    offsets = set()
    for batch in take(pipeline.make_video_pair_iterator(cfg, global_batch_size=4, seed=0), 4):
        assert batch["view1"].shape == (4, 32, 32, 3) and batch["frame1"].dtype == np.int32
        for r in range(4):
            t1, t2 = int(batch["frame1"][r]), int(batch["frame2"][r])
            assert 2 <= t2 - t1 <= 3 and 0 <= t1 and t2 < T_VIDEO
            offsets.add(t2 - t1)
            c = int(batch["label"][r])
            assert colour_of(batch["view1"][r]) == (c, t1)
            assert colour_of(batch["view2"][r]) == (c, t2)
            assert (batch["mask1"][r] == t1).all() and (batch["mask2"][r] == t2).all()
    assert offsets == {2, 3}


def _timed_clips(rates, frames=24):
    """tf.data clips of `frames` frames with a per-clip `fps` feature (label = clip index)."""
    clips = {
        "video": np.zeros((len(rates), frames, 8, 8, 3), np.uint8),
        "label": np.arange(len(rates), dtype=np.int64),
        "fps": np.asarray(rates, np.float32),
    }
    return tf.data.Dataset.from_tensor_slices(clips)


def _offsets(cfg, ds, steps=12):
    seen = {}
    for batch in take(pipeline.make_video_pair_iterator(cfg, global_batch_size=4, seed=1,
                                                         dataset=ds), steps):  # fmt: skip
        for c, t1, t2 in zip(batch["label"], batch["frame1"], batch["frame2"]):
            seen.setdefault(int(c), set()).add(int(t2 - t1))
    return seen


def test_video_pair_offsets_in_seconds_follow_each_clips_frame_rate():
    """(e) With a per-clip `fps` (`offset_unit=auto`, the default) offsets are drawn in seconds:
    the frame offset of a clip at f fps lies in [ceil(0.2 f), floor(1.0 f)] and reaches both
    ends; `offset_unit=frames` keeps `min_offset..max_offset` whatever the rate; `seconds` on a
    dataset without a rate, and a rate that puts no whole frame in the range, are errors."""
    rates = [5.0, 10.0, 20.0, 2.5]
    ds = _timed_clips(rates)
    cfg = dict(image_size=8, min_offset_seconds=0.2, max_offset_seconds=1.0, min_offset=1,
               max_offset=3, crop_scale=(0.5, 1.0))  # fmt: skip
    seen = _offsets(cfg, ds)
    want = {0: (1, 5), 1: (2, 10), 2: (4, 20), 3: (1, 2)}  # 2.5 fps: ceil(0.5), floor(2.5)
    for c, (lo, hi) in want.items():
        assert min(seen[c]) >= lo and max(seen[c]) <= hi, (c, sorted(seen[c]))
    assert {min(seen[3]), max(seen[3])} == {1, 2} and max(seen[2]) > 10  # the range scales
    frames = _offsets({**cfg, "offset_unit": "frames"}, ds)
    assert set().union(*frames.values()) == {1, 2, 3}
    # A dataset without a rate: `auto` counts frames, `seconds` is refused.
    no_rate = ds.map(lambda ex: {"video": ex["video"], "label": ex["label"]})
    assert set().union(*_offsets(cfg, no_rate, 4).values()) <= {1, 2, 3}
    with pytest.raises(ValueError, match="offset_unit='seconds'.*records no frame rate"):
        pipeline.make_video_pair_iterator(
            {**cfg, "offset_unit": "seconds"}, global_batch_size=4, seed=1, dataset=no_rate
        )
    # 1 fps: [0.2, 0.8] s holds no whole frame.
    slow = _timed_clips([1.0] * 4)
    with pytest.raises(iterators.BadRecordError, match="no whole frame offset"):
        _offsets({**cfg, "max_offset_seconds": 0.8}, slow, 1)


def test_video_pairs_never_cross_clips_and_resume():
    """(e) Clips of different lengths (2..7 frames) from a tf.data source: every pair is valid,
    short clips still give pairs, resume is exact."""
    clips = [np.stack([clip_frames(c, t) for t in range(c + 2)]) for c in range(6)]
    ds = tf.data.Dataset.from_tensors({"video": clips[0], "label": 0})
    for c in range(1, 6):
        ds = ds.concatenate(tf.data.Dataset.from_tensors({"video": clips[c], "label": c}))
    cfg = dict(image_size=16, mask_source="grid", grid_size=2, min_offset=1, max_offset=4)
    run = take(pipeline.make_video_pair_iterator(cfg, global_batch_size=4, seed=5, dataset=ds), 6)
    for batch in run:
        for r in range(4):
            c, t1, t2 = (int(batch[k][r]) for k in ("label", "frame1", "frame2"))
            assert 1 <= t2 - t1 <= 4 and t2 <= c + 1  # clip c has c + 2 frames
            assert colour_of(batch["view1"][r]) == (c, t1)
            assert colour_of(batch["view2"][r]) == (c, t2)
    resumed = take(
        pipeline.make_video_pair_iterator(
            cfg, global_batch_size=4, seed=5, dataset=ds, start_step=4
        ),
        2,
    )
    for a, b in zip(run[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Evaluation.


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_padding_covers_every_example_once(data_dir, process_count):
    """(f) 7 examples, global batch 4: every example once, padding marked invalid, every process
    yields the same number of batches."""
    cfg = config(data_dir)
    seen, labels, counts = [], [], []
    for p in range(process_count):
        batches = list(
            pipeline.make_eval_iterator(
                cfg, "validation", batch_size=4, process_index=p, process_count=process_count
            )
        )
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape == (4 // process_count, 32, 32, 3)
            assert b["instance_mask"].dtype == np.int32 and b["class_mask"].shape[1:] == (32, 32)
            valid = b["_valid"]
            assert valid.dtype == bool
            seen += b["index"][valid].tolist()
            labels += b["label"][valid].tolist()  # label = record number
            assert (b["instance_mask"][~valid] == -1).all() and (b["label"][~valid] == -1).all()
    assert sorted(seen) == sorted(labels) == list(range(N_VAL))
    assert len(set(counts)) == 1


def test_eval_center_crop_and_resize_full(data_dir):
    batch = next(pipeline.make_eval_iterator(config(data_dir), "validation", batch_size=7))
    rec = scene(int(batch["label"][0]))
    side = int(32 / 64 * H)  # S / (S + 32) * min(H, W)
    y0, x0 = (H - side + 1) // 2, (W - side + 1) // 2
    crop = rec["image"][y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    want = np.clip(tf.image.resize(crop, [32, 32], method="bicubic").numpy() / 255, 0, 1)
    np.testing.assert_allclose(batch["image"][0], want, atol=1e-5)
    full = next(
        pipeline.make_eval_iterator(
            config(data_dir, eval_crop="resize_full", eval_image_size=16),
            "validation",
            batch_size=7,
        )
    )
    assert full["label"][0] == batch["label"][0]  # same order
    want = tf.image.resize(rec["instance_mask"], [16, 16], method="nearest").numpy()[..., 0]
    np.testing.assert_array_equal(full["instance_mask"][0], want)
    assert full["labels"].dtype == bool and full["labels"][0, rec["label"]]


# ---------------------------------------------------------------------------------------------
# Bad records.


def bad_dataset(undecodable=(3,), wrong_mask=(5,), n=8):
    """Encoded PNG images with masks; some records broken."""
    ds = None
    for i in range(n):
        rec = scene(i)
        image = tf.io.encode_png(rec["image"])
        if i in undecodable:
            image = tf.constant(b"not an image")
        mask = rec["instance_mask"][:-3] if i in wrong_mask else rec["instance_mask"]
        one = tf.data.Dataset.from_tensors({"image": image, "instance_mask": mask, "label": i})
        ds = one if ds is None else ds.concatenate(one)
    return ds


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ({"undecodable": (3,), "wrong_mask": ()}, r"record 3 .*position 3"),
        ({"undecodable": (), "wrong_mask": (5,)}, r"record 5 .*size differs"),
    ],
)
def test_bad_record_raises_naming_it(bad, pattern):
    cfg = dict(image_size=16, mask_source="gt", shuffle_buffer=1)
    it = pipeline.make_pretrain_iterator(
        cfg, global_batch_size=2, seed=0, dataset=bad_dataset(**bad)
    )
    with pytest.raises(iterators.BadRecordError, match=pattern):
        take(it, 4)


def test_bad_records_skipped_and_counted():
    cfg = dict(image_size=16, mask_source="gt", skip_bad_records=True)
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=3, seed=0, dataset=bad_dataset())
    labels = np.concatenate([b["label"] for b in take(it, 6)])  # 18 of 3 epochs' 24 positions
    assert not set(labels.tolist()) & {3, 5}
    assert it.num_skipped == it.position - 18
    assert 3 <= it.num_skipped <= 6  # 2 per epoch of 8, over 20..24 positions consumed
    ev = pipeline.make_eval_iterator(cfg, None, batch_size=4, dataset=bad_dataset())
    batches = list(ev)
    assert ev.num_skipped == 2 and len(batches) == 2
    valid = np.concatenate([b["_valid"] for b in batches])
    assert valid.sum() == 6


def test_exact_resume_from_position_with_skipped_records():
    cfg = dict(image_size=16, mask_source="gt", skip_bad_records=True)
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=3, seed=0, dataset=bad_dataset())
    take(it, 3)
    position = it.position
    rest = take(it, 2)
    resumed = pipeline.make_pretrain_iterator(
        cfg, global_batch_size=3, seed=0, dataset=bad_dataset(), start_position=position
    )
    for a, b in zip(rest, take(resumed, 2)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_config_defaults_are_documented():
    cfg = data_config.default_data_config()
    doc = data_config.default_data_config.__doc__
    for key in cfg:
        assert re.search(rf"\b{key}\b", doc), key


def test_embedded_builders(tmp_path):
    """The pipelines on the repository's own synthetic_scenes / synthetic_videos (small configs)."""
    synthetic_scenes = pytest.importorskip("common.data.synthetic_scenes")
    synthetic_videos = pytest.importorskip("common.data.synthetic_videos")
    d = str(tmp_path)
    scenes = synthetic_scenes.SyntheticScenesConfig(
        name="pipeline_test", image_size=32, num_train=6, num_validation=3, num_test=1
    )
    synthetic_scenes.SyntheticScenes(
        config=scenes, data_dir=d, num_workers=1
    ).download_and_prepare()
    videos = synthetic_videos.SyntheticVideosConfig(
        name="pipeline_test",
        image_size=16,
        num_frames=4,
        num_train=4,
        num_validation=1,
        num_test=1,
    )
    synthetic_videos.SyntheticVideos(
        config=videos, data_dir=d, num_workers=1
    ).download_and_prepare()
    cfg = dict(data_dir=d, image_size=16, mask_source="fh")
    batch = next(
        pipeline.make_pretrain_iterator(
            dict(cfg, name="synthetic_scenes/pipeline_test"), global_batch_size=2, seed=0
        )
    )
    assert batch["view1"].shape == (2, 16, 16, 3) and batch["mask1"].shape == (2, 16, 16)
    assert batch["mask1"].min() >= 0
    ev = list(
        pipeline.make_eval_iterator(
            dict(cfg, name="synthetic_scenes/pipeline_test"), "validation", batch_size=2
        )
    )
    assert sum(int(b["_valid"].sum()) for b in ev) == 3 and ev[0]["labels"].dtype == bool
    assert ev[0]["class_mask"].shape == (2, 16, 16)
    pairs = next(
        pipeline.make_video_pair_iterator(
            dict(cfg, name="synthetic_videos/pipeline_test", mask_source="gt", max_offset=3),
            global_batch_size=2,
            seed=0,
        )
    )
    assert pairs["mask2"].shape == (2, 16, 16)
    assert ((pairs["frame2"] - pairs["frame1"] >= 1) & (pairs["frame2"] <= 3)).all()
