"""Linear segmentation probe: a 1x1 convolution on frozen dense features, mIoU on validation.

Protocol. Images are resized whole to `S x S` and passed through the frozen network (inference
BatchNorm); a linear layer per location (a 1x1 conv, `num_classes` outputs) maps the dense map
`[h, w, C]` (`layer`) to class logits, which are upsampled bilinearly to the label's own
resolution (`common.eval.overlap.resize_bilinear`) and trained by per-pixel cross-entropy
against the class mask (0 = background is a class; -1 = ignore: void, crowd, padding) of
`train_split`, with Adam (or
SGD + momentum) for `epochs` passes. The dense features of the training split are computed once
and kept on device (`cache_features`; turn it off for datasets whose features do not fit, at
the price of a forward pass per epoch). Validation: argmax of the upsampled logits, confusion
matrix over all pixels of the split, mIoU over the classes that occur (in labels or
predictions), and pixel accuracy.

Like the classification probe, features are standardised per channel with training statistics
(`standardize`), which leaves the probe linear but lets one learning rate fit every network.

Labels: `class_mask` of the embedded `synthetic_scenes` (13 classes with background), COCO
panoptic things (81; stuff counts as background, see `common.eval.dense_data`), a COCO-format
folder (`coco_folder`: its categories + background), a folder of images with `name_class.png`
class masks (`folder_images`). A dataset with instance masks only has no classes and cannot be
probed.

Void (`common.data.void`: 255 in 8-bit masks unless the dataset's `void_label` says otherwise)
reaches the probe as -1: such pixels carry no loss (`probe_loss`) and are in no cell of the
confusion matrix, so they affect neither training nor mIoU, as in PASCAL VOC's evaluation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.eval import Evaluator, overlap, register_evaluator
from common.eval.discovery import eval_data_config, eval_image_size, limit_split
from common.eval.features import FeatureBatches, extract_dense, network_variables
from common.eval.linear_probe import moments


def pixel_weights(labels: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
    """float32 `[B, H, W]`: 1 where the probe learns and scores, i.e. labels in
    `[0, num_classes)` (not void / crowd / padding, which are -1) of real rows (`valid` `[B]`)."""
    inside = (labels >= 0) & (labels < num_classes)
    return (inside & valid[:, None, None]).astype(jnp.float32)


def probe_loss(
    logits: jax.Array, labels: jax.Array, valid: jax.Array, num_classes: int
) -> jax.Array:
    """Mean per-pixel cross-entropy of logits `[B, H, W, C]` against labels int `[B, H, W]`
    over the pixels of `pixel_weights` (ignored pixels contribute nothing, not even to the
    count)."""
    w = pixel_weights(labels, valid, num_classes)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.clip(labels, 0, num_classes - 1)
    )
    return jnp.sum(ce * w) / jnp.maximum(w.sum(), 1.0)


@register_evaluator("seg_probe")
class SegProbeEvaluator(Evaluator):
    """mIoU of a linear per-location classifier trained on frozen dense features.

    Options (`config.evals.seg_probe`): see `defaults`.
    """

    defaults = {
        "dataset": "",  # TFDS name; empty: config.data.name
        "data_dir": "",
        "train_split": "train",
        "train_examples": 0,  # > 0: only the first ones of train_split (all if it is smaller)
        "split": "validation",
        "examples": 0,  # > 0: only the first ones of split (all if it is smaller)
        "batch_size": 64,  # global; also the probe's batch
        "image_size": 0,  # network input; 0: data.eval_image_size or data.image_size
        "network": "online",
        "layer": "out",
        "num_classes": 0,  # with background; 0: config.num_classes + 1 (COCO panoptic: 81)
        "epochs": 10,
        "optimizer": "adam",  # adam | sgd (momentum 0.9, cosine schedule)
        "learning_rate": 0.01,
        "standardize": True,
        "cache_features": True,
        "max_mask_size": 640,
        "num_thing_classes": 80,  # COCO panoptic
        "seed": 0,
    }

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        o = self.options
        num_classes = int(o.num_classes or self.config.num_classes + 1)
        data = eval_data_config(self.config, o)
        train_split = limit_split(data, o.train_split, int(o.train_examples))
        train = self._batches(setup, state, mesh, train_split, cache=bool(o.cache_features))
        num_batches = sum(1 for _ in train)
        mean, std = moments(train, mesh, axes=(0, 1, 2)) if o.standardize else (0.0, 1.0)
        steps = int(o.epochs) * num_batches
        if o.optimizer == "adam":
            tx = optax.adam(float(o.learning_rate))
        elif o.optimizer == "sgd":
            schedule = optax.cosine_decay_schedule(float(o.learning_rate), steps)
            tx = optax.sgd(schedule, momentum=0.9, nesterov=True)
        else:
            raise ValueError(f"config.evals.seg_probe.optimizer: adam or sgd, got {o.optimizer!r}")
        replicated = NamedSharding(mesh, P())
        dim = next(iter(train))["x"].shape[-1]
        params = jax.device_put(
            {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}, replicated
        )
        opt_state = jax.jit(tx.init, out_shardings=replicated)(params)

        def logits_of(params, item):
            x = (item["x"] - mean) / std
            logits = jnp.einsum("bhwc,ck->bhwk", x, params["w"]) + params["b"]
            canvas = item["labels"].shape[1:3]
            return overlap.resize_bilinear(logits, canvas, item["mask_hw"])

        @functools.partial(jax.jit, out_shardings=replicated, donate_argnums=(0, 1))
        def step(params, opt_state, item):
            def loss_fn(p):
                return probe_loss(logits_of(p, item), item["labels"], item["_valid"], num_classes)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        loss = jnp.zeros(())
        for epoch in range(int(o.epochs)):
            for item in train.epoch(int(o.seed) + epoch):
                params, opt_state, loss = step(params, opt_state, item)

        @functools.partial(jax.jit, out_shardings=replicated)
        def confusion(params, item):
            pred = jnp.argmax(logits_of(params, item), -1)
            return overlap.confusion_matrix(
                item["labels"], pred, num_classes, item["_valid"][:, None, None]
            )

        total = jnp.zeros((num_classes, num_classes), jnp.int32)
        val_split = limit_split(data, o.split, int(o.examples))
        for item in self._batches(setup, state, mesh, val_split, cache=False):
            total = total + confusion(params, item)
        miou, acc, seen = overlap.mean_iou(np.asarray(jax.device_get(total)))
        return {
            "miou": miou,
            "pixel_accuracy": acc,
            "num_classes_seen": float(seen),
            "final_train_loss": float(jax.device_get(loss)),
        }

    def _batches(self, setup, state, mesh, split: str, *, cache: bool) -> FeatureBatches:
        o = self.options
        module = setup.modules[o.network]
        data = eval_data_config(self.config, o)
        size = eval_image_size(self.config, o)

        def extract(variables, batch):
            x = extract_dense(module, o.layer, variables, batch["image"])
            return {
                "x": x,
                "labels": batch["class_mask"],
                "mask_hw": batch["mask_hw"],
                "_valid": batch["_valid"],
            }

        def host_batches():
            from common.eval import dense_data

            batches = dense_data.dense_label_batches(
                data, split, batch_size=int(o.batch_size), image_size=size,
                max_mask_size=int(o.max_mask_size), num_thing_classes=int(o.num_thing_classes),
                process_index=jax.process_index(), process_count=jax.process_count(),
            )  # fmt: skip
            for batch in batches:
                if "class_mask" not in batch:
                    raise ValueError(
                        f"seg_probe: dataset {data['name']!r} has no class masks (a folder of "
                        "instance masks has ids, not classes: add name_class.png files)"
                    )
                yield batch

        return FeatureBatches(
            host_batches, extract, network_variables(state, o.network), mesh,
            keys=("image", "class_mask", "mask_hw", "_valid"), cache=cache,
        )  # fmt: skip
