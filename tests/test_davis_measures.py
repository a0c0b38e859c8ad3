"""DAVIS 2017 J and F (`common.eval.label_propagation`) against hand-derived values and a
brute-force reading of the definitions in davis2017-evaluation's `metrics.py`."""

import math

import numpy as np
import pytest
import skimage.morphology
from scipy import ndimage

from common.eval import label_propagation as lp


def _dot(hw, *pixels):
    m = np.zeros(hw, bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def test_boundary_map_of_a_square_by_hand():
    # seg2bmap marks a pixel whose right, lower or lower-right neighbour differs, so the
    # boundary of a 2x2 square sits on its right/bottom pixels and on the background pixels
    # above and left of it (half a pixel towards the origin); the border is no boundary.
    seg = np.zeros((4, 4), bool)
    seg[1:3, 1:3] = True
    expected = np.array(
        [[1, 1, 1, 0],
         [1, 0, 1, 0],
         [1, 1, 1, 0],
         [0, 0, 0, 0]], bool,
    )  # fmt: skip
    np.testing.assert_array_equal(lp.boundary_map(seg), expected)
    # An object touching the right border: only the column left of it, never the border.
    edge = np.zeros((3, 3), bool)
    edge[:, 2] = True
    np.testing.assert_array_equal(lp.boundary_map(edge), np.array([[0, 1, 0]] * 3, bool))
    assert not lp.boundary_map(np.ones((5, 7), bool)).any()


def _brute_bmap(seg):
    """The definition read pixel by pixel: differs from an in-image right, lower or lower-right
    neighbour."""
    h, w = seg.shape
    out = np.zeros_like(seg, dtype=bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                if y + dy < h and x + dx < w and seg[y, x] != seg[y + dy, x + dx]:
                    out[y, x] = True
    return out


def _brute_f(pred, gt, radius, void=None):
    """F with explicit Euclidean distances between boundary pixels (no dilation)."""
    keep = np.ones_like(gt) if void is None else ~void
    pb, gb = _brute_bmap(pred & keep), _brute_bmap(gt & keep)
    p_pts, g_pts = np.argwhere(pb), np.argwhere(gb)
    if len(p_pts) == 0 and len(g_pts) == 0:
        return 1.0
    if len(p_pts) == 0 or len(g_pts) == 0:
        return 0.0
    d = np.sqrt(((p_pts[:, None, :] - g_pts[None, :, :]) ** 2).sum(-1))
    precision = np.mean(d.min(1) <= radius)
    recall = np.mean(d.min(0) <= radius)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _smooth_mask(rng, hw, shift=0):
    noise = ndimage.gaussian_filter(rng.normal(size=hw), 3.0)
    return np.roll(noise > 0.05, shift, axis=1)


def test_boundary_map_and_f_equal_brute_force_on_smooth_masks():
    rng = np.random.default_rng(0)
    for shift in (1, 3, 6):
        gt = _smooth_mask(rng, (40, 50))
        pred = _smooth_mask(np.random.default_rng(1), (40, 50), shift) | np.roll(gt, shift, 1)
        void = _smooth_mask(np.random.default_rng(2), (40, 50)) & (rng.random((40, 50)) < 0.3)
        np.testing.assert_array_equal(lp.boundary_map(gt), _brute_bmap(gt))
        radius = lp.boundary_tolerance(gt.shape)
        assert lp.boundary_f_measure(pred, gt) == pytest.approx(_brute_f(pred, gt, radius))
        assert lp.boundary_f_measure(pred, gt, void=void) == pytest.approx(
            _brute_f(pred, gt, radius, void)
        )


def test_tolerance_and_disk():
    # ceil(0.008 * diagonal): DAVIS 480p frames (480 x 854) match within 8 px, 100 x 100 within 2.
    assert lp.boundary_tolerance((480, 854)) == math.ceil(0.008 * math.hypot(480, 854)) == 8
    assert lp.boundary_tolerance((100, 100)) == 2
    assert lp.boundary_tolerance((100, 100), 3) == 3
    for r in range(0, 9):
        np.testing.assert_array_equal(lp._disk(r), skimage.morphology.disk(r).astype(bool))


def test_f_of_single_pixels_by_hand():
    hw = (12, 12)
    gt = _dot(hw, (5, 5))  # boundary {(4,4), (4,5), (5,4), (5,5)}
    pred = _dot(hw, (5, 7))  # boundary {(4,6), (4,7), (5,6), (5,7)}
    # Radius 1: (4,6) and (5,6) are 1 px from gt's (4,5), (5,5) and vice versa: P = R = 1/2.
    assert lp.boundary_f_measure(pred, gt, bound_th=1) == pytest.approx(0.5)
    # Two more columns away nothing matches.
    assert lp.boundary_f_measure(_dot(hw, (5, 8)), gt, bound_th=1) == 0.0
    # Void erases a predicted extra pixel from both masks: F back to 1. Without the void the
    # extra pixel adds 4 unmatched predicted boundary pixels: P = 4/8, R = 1, F = 2/3.
    pred2 = _dot(hw, (5, 5), (9, 9))
    assert lp.boundary_f_measure(pred2, gt, bound_th=1) == pytest.approx(2 / 3)
    assert lp.boundary_f_measure(pred2, gt, bound_th=1, void=_dot(hw, (9, 9))) == 1.0
    # Empty conventions: both empty 1, one empty 0 (also when void empties the ground truth).
    empty = np.zeros(hw, bool)
    assert lp.boundary_f_measure(empty, empty) == 1.0
    assert lp.boundary_f_measure(empty, gt) == 0.0 and lp.boundary_f_measure(gt, empty) == 0.0
    assert lp.boundary_f_measure(empty, gt, void=gt) == 1.0


def test_j_with_void_by_hand():
    hw = (6, 6)
    gt = np.zeros(hw, bool)
    gt[1:3, 1:3] = True  # 4 pixels
    pred = gt.copy()
    pred[4, 4] = pred[4, 5] = True  # 2 false positives
    assert lp.region_similarity(pred, gt) == pytest.approx(4 / 6)
    assert lp.region_similarity(pred, gt, _dot(hw, (4, 5))) == pytest.approx(4 / 5)
    # Void over a true pixel leaves it out of both the intersection and the union.
    assert lp.region_similarity(gt, gt, _dot(hw, (1, 1))) == 1.0
    assert lp.region_similarity(pred, gt, _dot(hw, (1, 1), (4, 4), (4, 5))) == 1.0
    assert lp.region_similarity(gt, gt, gt) == 1.0  # everything void: empty union scores 1


def test_frame_range_leaves_out_first_and_last():
    t, hw = 4, (10, 10)
    gt = np.zeros((t,) + hw, np.int32)
    gt[:, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[3] = 0  # the last frame is lost entirely: J = F = 0 there
    # DAVIS scores frames 1 and 2 only.
    assert lp.clip_scores(pred, gt, [1]) == [(1.0, 1.0)]
    assert list(lp.scored_frames(4)) == [1, 2]
    # The old range 1..T-1 includes the last frame: means over 3 frames.
    (j, f) = lp.clip_scores(pred, gt, [1], frames="all_but_first")[0]
    assert j == pytest.approx(2 / 3) and f == pytest.approx(2 / 3)
    pred = gt.copy()
    pred[1] = 0  # a lost middle frame counts: (0 + 1) / 2
    assert lp.clip_scores(pred, gt, [1]) == [(0.5, 0.5)]
    with pytest.raises(ValueError, match="2 frames has no frame to score"):
        lp.clip_scores(gt[:2], gt[:2], [1])
    with pytest.raises(ValueError, match="frames must be one of"):
        lp.scored_frames(5, "all")


def test_clip_scores_exclude_void_pixels():
    t, hw = 3, (10, 10)
    gt = np.zeros((t,) + hw, np.int32)
    gt[:, 2:6, 2:6] = 1
    gt[:, 6, 2:6] = -1  # a void outline below the object
    pred = np.zeros_like(gt)
    pred[:, 2:7, 2:6] = 1  # the object plus the void row
    # Frame 1: void removed from both masks, prediction equals the object.
    assert lp.clip_scores(pred, gt, [1]) == [(1.0, 1.0)]
    # Read as background (the released driver's effect), the void row is a false positive:
    # J = 16 / 20, while F stays 1 (the bottom boundary moves one row, within the 1 px
    # tolerance of a 10 x 10 frame).
    (j, f) = lp.clip_scores(pred, np.maximum(gt, 0), [1])[0]
    assert j == pytest.approx(16 / 20) and f == 1.0


def test_first_frame_labels_ignore_void():
    mask = np.array([[1, -1], [0, -1]])
    labels = np.asarray(lp.first_frame_labels(mask, (1, 1), 2))
    # One cell: of its two labelled pixels one is object 1, one background.
    np.testing.assert_allclose(labels, [[0.5, 0.5]])
    labels = np.asarray(lp.first_frame_labels(mask, (1, 2), 2))
    # The right cell is all void: background.
    np.testing.assert_allclose(labels, [[0.5, 0.5], [1.0, 0.0]])
