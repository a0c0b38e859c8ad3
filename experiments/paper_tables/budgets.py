"""The evaluators every table uses, sized for the full and the `--quick` budget.

Stand-ins for the papers' transfer tasks, all with frozen features on the embedded datasets'
**test** split (there is no COCO, PASCAL or Cityscapes here); the validation split is what the
`local` recipe was chosen on (`local_recipe.py`), so no table figure took part in a choice:

* `seg_probe/miou`: a linear per-location probe for the class mask (semantic segmentation);
* `discovery/abo_i`, `abo_c`, `or`: k-means object discovery (Odin's table), at 128 px input
  so that the stride-8 feature grid is 16 x 16 (at 64 px the best possible grid segmentation
  scores 0.469, see docs/results.md);
* `linear_probe/top1`, `knn/top1`: image classification of the majority class;
* `rank/rankme`: the effective rank of the pooled features (no labels; collapse lowers it);
* `label_propagation/JF_mean`: DAVIS-style propagation of the first frame's instance masks
  through the embedded test videos (VITO's video evaluation).
"""

from __future__ import annotations


def image_evals(
    quick: bool, *, discovery_network: str = "online", split: str = "test"
) -> dict[str, dict]:
    examples = 500 if quick else 1000
    return {
        "seg_probe": {
            "train_examples": examples,
            "examples": examples,
            "epochs": 5,
            "split": split,
        },
        "discovery": {
            "examples": examples,
            "image_size": 128,
            "network": discovery_network,
            "pictures": False,
            "split": split,
        },
        "linear_probe": {"train_examples": 2 * examples, "examples": examples, "split": split},
        "knn": {"train_examples": 2 * examples, "examples": examples, "split": split},
        "rank": {"examples": examples, "split": split},
    }


def video_evals(quick: bool, *, split: str = "test") -> dict[str, dict]:
    return {
        "label_propagation": {"examples": 50 if quick else 100, "image_size": 128, "split": split}
    }
