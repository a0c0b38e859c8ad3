"""The pieces of benchmarks/proxy_difficulty.py: grid ceiling, colour histograms, the probe."""

import numpy as np

from benchmarks import proxy_difficulty as pd


def test_grid_majority_paints_each_cell_with_its_commonest_id():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:4] = 1  # 3 of the 4 rows of the top-left 4x4 cell: id 1 wins it
    mask[4:8, 4:6] = 2  # half of the bottom-right cell: a tie, the smaller id (0) wins
    mask[4:7, 0:4] = 3  # 12 of 16 pixels: id 3
    got = pd.grid_majority(mask, 2)
    expected = np.zeros((8, 8), np.int32)
    expected[0:4, 0:4] = 1
    expected[4:8, 0:4] = 3
    np.testing.assert_array_equal(got, expected)


def test_grid_aligned_objects_reach_the_ceiling_and_others_fall_short():
    aligned = np.zeros((2, 16, 16), np.uint8)
    aligned[0, 0:4, 4:12] = 1
    aligned[1, 8:16, 8:12] = 1
    aligned[1, 0:4, 0:4] = 2
    grid = np.stack([pd.grid_majority(m, 4) for m in aligned])
    assert pd.pooled_abo(grid, aligned, num_segments=256) == 1.0
    # A 2x2 object in the middle of a 4x4 cell: the cell goes to the background, so the best
    # segment is the whole image, IoU 4 / 256.
    small = np.zeros((1, 16, 16), np.uint8)
    small[0, 1:3, 1:3] = 1
    grid = np.stack([pd.grid_majority(m, 4) for m in small])
    assert pd.pooled_abo(grid, small, num_segments=256) == 4 / 256


def test_colour_histogram_counts_pixels_in_joint_bins():
    pixels = np.array([[0, 0, 0], [255, 255, 255], [255, 255, 255], [40, 0, 200]], np.uint8)
    h = pd.colour_histogram(pixels, bins=8)
    assert h.shape == (512,) and h.sum() == 1.0
    assert h[0] == 0.25 and h[511] == 0.5 and h[(1 * 8 + 0) * 8 + 6] == 0.25


def test_probe_finds_a_colour_cue_and_not_a_missing_one():
    rng = np.random.default_rng(0)
    y = rng.integers(4, size=400)
    noise = rng.uniform(size=(400, 16))
    cue = noise.copy()
    cue[np.arange(400), y] += 1.0  # the class shows in its own bin
    over, chance = pd.probe_over_chance(cue[:300], y[:300], cue[300:], y[300:], 4)
    assert over * chance >= 0.95  # (the regularised probe may miss an example or two)
    over, _ = pd.probe_over_chance(noise[:300], y[:300], noise[300:], y[300:], 4)
    assert over < 1.5  # pure noise: near chance
