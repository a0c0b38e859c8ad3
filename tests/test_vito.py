"""VITO: attention pooling, frame pairs in the trainer, curation, label propagation (J & F), and
the training step (tiny configs, tests/helpers.py).

* `AttentionPool`: weights sum to 1 over space, pooling equals a numpy reference, zero logits
  (the initial state) equal global mean pooling;
* frame pairs: the trainer reads `video_pairs` when `data.kind` says so, with offsets in seconds
  at the embedded clips' recorded rate, and offset 0 (in frames) cuts both views from one frame;
  offsets limits and clip boundaries: tests/test_pipeline.py (test_video_pairs_*);
* curation: the real Beam pipeline on a constructed dataset with a classifier whose predictions
  are known keeps and drops the right videos, and writes them unchanged; videos shorter than
  `min_seconds` (frame count / fps) are dropped before the classifier, also with the rate the
  embedded `synthetic_videos` record; a checkpoint of this framework classifies through
  `CheckpointClassifier`;
* label propagation: J = F = 1 for a perfect propagation, known values for a shifted mask;
* a tiny `common.train.main` VITO run compiles its step once, logs per-scale losses, draws the
  attention pictures and runs the label propagation evaluator.
"""

from __future__ import annotations

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import heads, train
from common.eval import label_propagation as lp
from tests import helpers

# ---------------------------------------------------------------------------------------------
# Attention pooling.


def test_attention_weights_sum_to_one_and_pool_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    logits = rng.normal(size=(3, 5, 4, 2)).astype(np.float32) * 3
    pooled, weights = heads.spatial_softmax_pool(jnp.asarray(x), jnp.asarray(logits))
    assert pooled.shape == (3, 2, 6) and weights.shape == (3, 2, 20)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
    flat = logits.reshape(3, 20, 2)
    e = np.exp(flat - flat.max(1, keepdims=True))
    w = (e / e.sum(1, keepdims=True)).transpose(0, 2, 1)  # [B, Q, N]
    np.testing.assert_allclose(np.asarray(weights), w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(pooled), np.einsum("bqn,bnc->bqc", w, x.reshape(3, 20, 6)), rtol=1e-5,
        atol=1e-6,
    )  # fmt: skip

    # The module (random logit layer): weights of every image and query sum to 1.
    pool = heads.AttentionPool(hidden_dim=8, num_queries=3, feature_key="stage3", zero_init=False)
    feats = {"stage3": jnp.asarray(x)}
    params = pool.init(jax.random.key(0), feats)
    out, wts = pool.apply(params, feats, return_weights=True)
    assert out.shape == (3, 3, 6)
    np.testing.assert_allclose(np.asarray(wts).sum(-1), 1.0, atol=1e-6)
    assert float(np.asarray(wts).std()) > 1e-3  # not uniform: the test above is not vacuous


def test_uniform_attention_equals_mean_pooling():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 5)).astype(np.float32))
    pooled, weights = heads.spatial_softmax_pool(x, jnp.zeros((2, 6, 6, 1)))
    np.testing.assert_allclose(np.asarray(weights), 1 / 36, rtol=1e-6)
    mean = heads.MeanPool().apply({}, {"out": x})
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(mean), rtol=1e-5, atol=1e-6)
    # The module starts there: its logit layer is zero-initialised.
    pool = heads.AttentionPool(hidden_dim=4)
    params = pool.init(jax.random.key(0), {"out": x})
    np.testing.assert_allclose(
        np.asarray(pool.apply(params, {"out": x})), np.asarray(mean), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="no feature map 'stage9'"):
        heads.AttentionPool(feature_key="stage9").init(jax.random.key(0), {"out": x})


def test_concat_and_several_queries_shapes(tmp_path):
    """`combine='concat'` gives one head over the concatenated scales, `num_queries` Q pooled
    vectors per scale; the step traces with them (shapes only, nothing compiled)."""
    config = helpers.tiny_config(
        "vito", str(tmp_path), **{"method_kwargs.combine": "concat", "method_kwargs.num_queries": 2}
    )
    setup = train.build(config, num_examples=256)
    state = jax.eval_shape(functools.partial(train.init_state, setup), train.init_rng(0))
    online = state.params["online"]
    assert {"projector_concat", "predictor_concat"} <= set(online)
    assert "projector_stage3" not in online
    s = config.data.image_size
    images = jax.ShapeDtypeStruct((4, s, s, 3), jnp.float32)
    out = jax.eval_shape(
        lambda p, b, x: setup.modules["online"].apply(
            {"params": p, "batch_stats": b}, x, train=False, return_attention=True
        ),
        online, state.batch_stats["online"], images,
    )  # fmt: skip
    d = config.model.projector_dim
    assert out["projection"].shape == (4, 1, 2, d) and out["prediction"].shape == (4, 1, 2, d)
    assert [w.shape[1] for w in out["attention"]] == [2, 2]
    assert out["embedding"].shape == (4, out["dense"].shape[-1])
    from common.method import Networks

    def loss(params, stats, x):
        nets = Networks(setup.modules, params, stats)
        return setup.method.loss(nets, {"view1": x, "view2": x}, None, 0)

    params = {**state.params, **state.ema_params}
    total, aux = jax.eval_shape(loss, params, state.batch_stats, images)
    metrics = aux["metrics"]
    assert total.shape == ()
    assert "loss_concat" in metrics


# ---------------------------------------------------------------------------------------------
# Frame pairs through the trainer's data iterator.


def _vito_config(data_dir, **overrides):
    return helpers.tiny_config(
        "vito", data_dir, **{
            "data.name": "synthetic_videos/tiny",
            "evals.monitor.dataset": "synthetic_scenes/tiny",
            "evals.label_propagation.dataset": "synthetic_videos/tiny",
            "evals.label_propagation.examples": 2,
            "evals.label_propagation.image_size": 0,
            **overrides,
        }
    )  # fmt: skip


def test_trainer_reads_frame_pairs_and_offset_zero_is_one_frame(data_dir):
    from common.data import loading

    config = _vito_config(data_dir)
    loading.ensure_dataset(config.data)
    builder = loading.get_builder(config.data)
    assert builder.info.features["fps"].np_dtype == np.float32
    fps = builder.info.metadata["fps"]
    assert fps == 4.0
    batch = next(train.make_data_iterator(config, 0))
    d = batch["frame2"] - batch["frame1"]
    assert batch["view1"].shape == (16, 32, 32, 3)
    # The clips record their rate, so the offsets are the default seconds at 4 fps: 0.04..2 s
    # -> frames ceil(0.16) = 1 .. floor(8) = 8, cut to 7 by the 8-frame clips.
    lo = int(np.ceil(config.data.min_offset_seconds * fps))
    hi = min(int(np.floor(config.data.max_offset_seconds * fps)), 7)
    assert (lo, hi) == (1, 7)
    assert (d >= lo).all() and (d <= hi).all() and d.max() > 1
    assert (batch["frame2"] < 8).all()  # the tiny clips have 8 frames

    same = _vito_config(
        data_dir, **{"data.min_offset": 0, "data.max_offset": 0, "data.offset_unit": "frames"}
    )
    batch = next(train.make_data_iterator(same, 0))
    np.testing.assert_array_equal(batch["frame1"], batch["frame2"])
    bad = _vito_config(data_dir, **{"data.kind": "clips"})
    with pytest.raises(ValueError, match="data.kind: unknown kind 'clips'"):
        train.make_data_iterator(bad, 0)


# ---------------------------------------------------------------------------------------------
# Curation.

CODE = 20  # frame pixel value = CODE * class


class PixelCodeClassifier:
    """Predicts the class written into each constructed frame (its mean value / CODE): a
    classifier whose predictions the test knows exactly."""

    def __call__(self, frames):
        return np.round(frames.reshape(len(frames), -1).mean(-1) / CODE).astype(np.int32)


def _make_videos(directory, name, videos, fps=None):
    """`videos`: (label, per-frame codes); `fps`: a per-video `fps` feature's values (None: the
    dataset records no frame rate)."""
    import tensorflow_datasets as tfds

    spec = {
        "video": tfds.features.Video(shape=(None, 16, 16, 3)),
        "label": tfds.features.ClassLabel(num_classes=12),
    }
    if fps is not None:
        spec["fps"] = tfds.features.Scalar(dtype=np.float32)
    features = tfds.features.FeaturesDict(spec)

    def examples():
        for i, (label, codes) in enumerate(videos):
            frames = np.stack([np.full((16, 16, 3), CODE * c, np.uint8) for c in codes])
            ex = {"video": frames, "label": label}
            if fps is not None:
                ex["fps"] = np.float32(fps[i])
            yield i, ex

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, split_datasets={"train": examples()},
        data_dir=directory, disable_shuffling=True,
    )  # fmt: skip


# (label, per-frame predicted class); the first 3 frames are classified, threshold 0.5.
VIDEOS = [
    (1, [1, 1, 1, 1]),  # agreement 1: kept
    (2, [2, 3, 2, 2]),  # 2/3: kept
    (3, [3, 0, 0, 3]),  # 1/3: dropped
    (4, [5, 5, 5, 4]),  # 0: dropped
    (0, [0, 1, 0, 1]),  # 2/3: kept
    (5, [1, 1, 5, 5]),  # 1/3: dropped (over all 4 frames it would be 1/2 and kept)
    (6, [6, 6]),  # a short clip, 2 frames: 1, kept
]


def test_curation_keeps_and_drops_the_right_videos(tmp_path):
    import tensorflow_datasets as tfds

    from vito import curate

    d = str(tmp_path / "tfds")
    _make_videos(d, "curate_test_videos", VIDEOS)
    # This dataset records no frame rate: the 10 s rule cannot run, and says so.
    with pytest.raises(ValueError, match="records no frame rate.*--fps.*--min_seconds 0"):
        curate.curate("curate_test_videos", d, PixelCodeClassifier)
    report = curate.curate(
        "curate_test_videos", d, PixelCodeClassifier, num_frames=3, threshold=0.5,
        min_seconds=0, records_per_shard=3, beam_pipeline_options="direct_num_workers=1",
        report_path=str(tmp_path / "report.json"),
    )  # fmt: skip
    want = [1.0, 2 / 3, 1 / 3, 0.0, 2 / 3, 1 / 3, 1.0]
    rows = report["videos"]
    assert [r["index"] for r in rows] == list(range(7))
    np.testing.assert_allclose([r["agreement"] for r in rows], want)
    assert [r["frames"] for r in rows] == [3] * 6 + [2]
    kept = [r["index"] for r in rows if r["kept"]]
    assert kept == [0, 1, 4, 6]
    assert report["splits"] == {
        "train": {"kept": 4, "dropped": 3, "dropped_short": 0, "dropped_classifier": 3}
    }
    assert [r["seconds"] for r in rows] == [None] * 7
    with open(tmp_path / "report.json") as f:
        assert json.load(f)["videos"] == rows

    # The filtered dataset: exactly the kept videos, frames and labels unchanged.
    builder = tfds.builder_from_directory(report["output_dir"])
    got = sorted(
        ((int(ex["label"]), ex["video"]) for ex in tfds.as_numpy(builder.as_dataset("train"))),
        key=lambda t: t[0],
    )
    expected = sorted((VIDEOS[i][0], VIDEOS[i][1]) for i in kept)
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (_, video), (_, codes) in zip(got, expected):
        np.testing.assert_array_equal(video[:, 0, 0, 0], np.asarray(codes) * CODE)

    with pytest.raises(ValueError, match="threshold must be in"):
        curate.curate("curate_test_videos", d, PixelCodeClassifier, threshold=1.5)


# (label, per-frame classes, fps): lengths 10 s, 8 s, 12 s, 20 s with the recorded rates.
TIMED_VIDEOS = [
    (1, [1, 1, 1, 1], 0.4),  # 10 s, exactly min_seconds: classified, agreement 1, kept
    (2, [2, 2, 2, 2], 0.5),  # 8 s: dropped as short although the classifier agrees
    (3, [0, 0, 0], 0.25),  # 12 s: classified, agreement 0, dropped by the classifier
    (4, [4, 4], 0.1),  # 20 s: kept
]


def test_curation_drops_short_videos_before_the_classifier(tmp_path):
    """The length rule: frame count / fps < min_seconds -> dropped unclassified (no frames read,
    agreement null), counted apart in the report; the rate comes from the per-video `fps`
    feature, or from `fps=` overriding it."""
    from vito import curate

    d = str(tmp_path / "tfds")
    _make_videos(
        d, "curate_timed_videos", [v[:2] for v in TIMED_VIDEOS], fps=[v[2] for v in TIMED_VIDEOS]
    )
    common = dict(
        num_frames=4, threshold=0.5, records_per_shard=2,
        beam_pipeline_options="direct_num_workers=1",
    )  # fmt: skip
    report = curate.curate(
        "curate_timed_videos", d, PixelCodeClassifier, report_path=str(tmp_path / "r1.json"),
        **common,
    )  # fmt: skip
    rows = report["videos"]
    np.testing.assert_allclose([r["seconds"] for r in rows], [10.0, 8.0, 12.0, 20.0])
    assert [r["total_frames"] for r in rows] == [4, 4, 3, 2]
    assert [r["short"] for r in rows] == [False, True, False, False]
    assert [r["agreement"] for r in rows] == [1.0, None, 0.0, 1.0]
    assert [r["frames"] for r in rows] == [4, 0, 3, 2]  # the short one is never decoded
    assert [r["kept"] for r in rows] == [True, False, False, True]
    assert report["min_seconds"] == 10.0 and report["fps_source"] == "feature 'fps'"
    assert report["splits"]["train"] == {
        "kept": 2, "dropped": 2, "dropped_short": 1, "dropped_classifier": 1,
    }  # fmt: skip
    assert report["output"].endswith("-s10")

    # A stated rate replaces the recorded ones: at 0.2 fps the lengths are 20, 20, 15, 10 s.
    # (The scoring function on the source's shard: the Beam pass around it ran above.)
    from common.data import build_tools
    from common.data.shards import plan_source_shards

    source = build_tools.load_source("curate_timed_videos", d)
    rate, fps_key, where = curate._frame_rate(source, 0.2, 12.0)
    assert (rate, fps_key, where) == (0.2, None, "--fps 0.2")
    job = curate.Job(source.data_dir, "video", "label", 4, None, 12.0, rate, fps_key)
    _, shards = plan_source_shards(source, ["train"], 4)
    rows = [r for shard in shards for r in curate.score_shard(job, shard, PixelCodeClassifier())]
    np.testing.assert_allclose([r["seconds"] for r in rows], [20.0, 20.0, 15.0, 10.0])
    assert [r["short"] for r in rows] == [False, False, False, True]
    assert [r["agreement"] for r in rows] == [1.0, 1.0, 0.0, None]


def test_video_length_needs_a_positive_frame_rate():
    from vito import curate

    job = curate.Job("", "video", "label", 4, None, min_seconds=10.0, fps_key="fps")
    ex = {"video": np.zeros((30,), object), "fps": np.float32(3.0)}
    assert curate.video_length(job, ex, "train-0") == (30, 3.0, 10.0)
    with pytest.raises(ValueError, match="video train-1: frame rate 0 .*not positive"):
        curate.video_length(job, {**ex, "fps": np.float32(0.0)}, "train-1")
    # With the rule off an unknown rate only leaves the length unknown.
    off = curate.Job("", "video", "label", 4, None, min_seconds=0.0, fps_key="fps")
    assert curate.video_length(off, {**ex, "fps": np.float32(0.0)}, "train-1") == (30, None, None)
    with pytest.raises(ValueError, match="--min_seconds must be >= 0"):
        curate.curate("unused", "", PixelCodeClassifier, min_seconds=-1)


def test_curation_length_rule_reads_the_embedded_clips_rate(data_dir):
    """`synthetic_videos` records its rate (4 fps), so the length rule runs on it without
    `--fps`: the tiny clips (8 frames) last 2 s, short for `--min_seconds 3`, long enough for 2.
    The scoring function of the Beam pass on one shard (the pass itself: tests above)."""
    from common.data import loading
    from common.data.shards import plan_source_shards
    from vito import curate

    data = _vito_config(data_dir).data
    loading.ensure_dataset(data)
    source = loading.get_builder(data)
    rate, fps_key, where = curate._frame_rate(source, None, curate.DEFAULT_MIN_SECONDS)
    assert (rate, fps_key, where) == (None, "fps", "feature 'fps'")
    _, (shard,) = plan_source_shards(source, ["validation"], 8)
    for min_seconds, short in ((3.0, True), (2.0, False)):
        job = curate.Job(source.data_dir, "video", "label", 2, None, min_seconds, None, fps_key)
        rows = list(curate.score_shard(job, shard, PixelCodeClassifier()))
        assert len(rows) == 8
        assert [(r["total_frames"], r["fps"], r["seconds"]) for r in rows] == [(8, 4.0, 2.0)] * 8
        assert all(r["short"] == short for r in rows)
        assert all((r["agreement"] is None) == short for r in rows)


def test_checkpoint_classifier_predicts_with_the_runs_linear_head(data_dir, tmp_path):
    """A checkpoint whose linear head ignores the features (kernel 0) and favours class 7
    predicts 7 for every frame: the classifier is the run's network + head, restored."""
    from common import checkpoint
    from vito import curate

    config = helpers.tiny_config("supervised", data_dir)
    setup = train.build(config, num_examples=256)
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    head = state.params["classifier"]
    head = {"kernel": jnp.zeros_like(head["kernel"]), "bias": jnp.zeros_like(head["bias"])}
    head["bias"] = head["bias"].at[7].set(5.0)
    state = state.replace(params={**state.params, "classifier": head})
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, state, checkpoint.model_signature(config, state))
    ckpt.close()
    classifier = curate.CheckpointClassifier(config, str(tmp_path), batch_size=4)
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(classifier(frames), [7] * 5)


# ---------------------------------------------------------------------------------------------
# Label propagation and J & F.


def _blocks(ids_grid, cell):
    return np.kron(ids_grid, np.ones((cell, cell), np.int32)).astype(np.int32)


def test_perfect_propagation_scores_one():
    """Features that identify each cell's object (one-hot ids) propagate the first frame's masks
    exactly, through moving objects: J = F = 1."""
    t, h, w, cell = 5, 6, 6, 4
    grids = []
    for i in range(t):  # object 1 moves right by one cell per frame, object 2 stays
        g = np.zeros((h, w), np.int32)
        g[1:3, i : i + 2] = 1
        g[4:6, 3:5] = 2
        grids.append(g)
    grids = np.stack(grids)
    masks = np.stack([_blocks(g, cell) for g in grids])  # [T, 24, 24]
    feats = jax.nn.one_hot(grids.reshape(t, h * w), 3)  # [T, N, 3]
    first = lp.first_frame_labels(masks[0], (h, w), 3)
    labels = lp.propagate_clip(feats, first, (h, w), context=2, k=3, radius=2)
    # On the feature grid the labels are exactly the objects' one-hot ids.
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(feats))
    # Nearest upsampling reproduces the masks (bilinear, DINO's, rounds the objects' corners).
    pred = lp.labels_to_segmentation(labels, (h, w), masks.shape[1:], "nearest")
    np.testing.assert_array_equal(pred, masks)
    scores = lp.clip_scores(pred, masks, [1, 2])
    assert scores == [(1.0, 1.0), (1.0, 1.0)]


def test_j_and_f_of_known_errors():
    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True
    pred = np.zeros_like(gt)
    pred[20:60, 40:80] = True  # half overlap: IoU = 800 / 2400
    assert lp.region_similarity(pred, gt) == pytest.approx(1 / 3)
    assert lp.region_similarity(gt, gt) == 1.0 and lp.boundary_f_measure(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert lp.region_similarity(empty, empty) == 1.0 and lp.boundary_f_measure(empty, empty) == 1.0
    assert lp.boundary_f_measure(empty, gt) == 0.0
    # A 1-pixel shift is within the tolerance (ceil(0.008 * 141) = 2 px): F = 1, J < 1.
    shifted = np.roll(gt, 1, axis=1)
    assert lp.boundary_f_measure(shifted, gt) == 1.0 and lp.region_similarity(shifted, gt) < 1
    # A 20-pixel shift: only the horizontal edges' overlapping halves match.
    assert 0.2 < lp.boundary_f_measure(pred, gt) < 0.8


# ---------------------------------------------------------------------------------------------
# The training step.


def test_vito_step_compiles_once_and_runs(data_dir, tmp_path, monkeypatch):
    counted = chex.assert_max_traces(train.train_step, n=1)
    monkeypatch.setattr(train, "train_step", counted)
    config = _vito_config(data_dir, pictures_every_steps=6)
    results = train.main(config, str(tmp_path))
    from common.metrics import read_jsonl

    rows = [r for r in read_jsonl(str(tmp_path)) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:  # the loss is the sum of the per-scale MoCLR losses
        assert r["train/loss"] == pytest.approx(
            r["train/loss_stage3"] + r["train/loss_stage4"], rel=1e-5
        )
    assert os.path.exists(tmp_path / "pictures" / "step_0000006.png")
    assert 0.0 <= results["label_propagation/JF_mean"] <= 1.0
    assert results["label_propagation/num_clips"] == 2
    assert "monitor/top1" in results
