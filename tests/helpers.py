"""Shared test utilities: tiny configs, the tiny embedded dataset, and CLI runs of the trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Overrides that make any `local` config tiny enough for a test: 32 px views, a narrow
# small-stem ResNet (4x4 grid, 8 base channels), batch 16, a handful of steps.
TINY_OVERRIDES = {
    "batch_size": 16,
    "total_steps": 6,
    "log_every_steps": 1,
    "checkpoint.every_steps": 2,
    "data.image_size": 32,
    "model.backbone_kwargs.base_width": 8,
    "data.name": "synthetic_scenes/tiny",
    "data.shuffle_buffer": 64,
    "model.projector_hidden": 64,
    "model.projector_dim": 32,
    "model.predictor_hidden": 64,
    "optimizer.warmup_steps": 2,
    # The tests' learning rates and tolerances were measured with LARS (the `local` recipe
    # until the 4.0.0 sweep chose AdamW): the tiny runs keep it. AdamW trains in
    # test_optim.py, test_eval.py's supervised run and the notebooks.
    "optimizer.name": "lars",
    "optimizer.base_lr": 6.4,
    "optimizer.weight_decay": 1.5e-6,
    "evals.monitor.batch_size": 32,
    # The trainer's tests check training; the evaluators have their own tests (test_eval.py).
    # Leaving them out saves ~30 s of compilation per tiny run.
    "evals.discovery.enabled": False,
    "evals.seg_probe.enabled": False,
    "evals.linear_probe.enabled": False,
    "evals.knn.enabled": False,
    "evals.rank.enabled": False,
    # The random network's figures beside the final ones: tested once (test_eval.py), not in
    # every tiny run.
    "random_init_baseline": False,
}


def tiny_config(experiment: str, data_dir: str, **overrides):
    """The `local` variant of `experiments/<experiment>.py` with `TINY_OVERRIDES` applied."""
    import importlib

    module = importlib.import_module(f"experiments.{experiment}")
    config = module.get_config("local")
    for key, value in {**TINY_OVERRIDES, "data.data_dir": data_dir, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def cli_args(experiment: str, data_dir: str, workdir: str, **overrides) -> list[str]:
    """Command line of `python -m common.train` for the tiny config."""
    args = [
        sys.executable, "-m", "common.train",
        f"--config={os.path.join(REPO, 'experiments', experiment + '.py')}:local",
        f"--workdir={workdir}",
    ]  # fmt: skip
    for key, value in {**TINY_OVERRIDES, "data.data_dir": data_dir, **overrides}.items():
        args.append(f"--config.{key}={value}")
    return args


# XLA flags of every test process: the tests' programs are tiny and run a few steps, so XLA:CPU
# spends most of their time compiling, and its backend (LLVM) optimisation is the larger part of
# that. Turned off, a tiny trainer run compiles several times faster; the programs compute the
# same functions (tests compare runs made under the same flags).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_env(num_devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices} {TEST_XLA_FLAGS}"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run_cli(args, *, num_devices=1, timeout=600, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, env=subprocess_env(num_devices), capture_output=True, text=True, timeout=timeout,
        cwd=REPO,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def load_final_params(workdir: str, step: int | None = None) -> dict[str, np.ndarray]:
    """Flat {path: array} of the parameters in the latest checkpoint of `workdir` (or `step`)."""
    import jax
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    # Restore onto this process's first device, whatever topology saved it.
    metadata = manager.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
        "state"
    ]
    flat = jax.tree_util.tree_flatten_with_path(
        {"params": state["params"], "ema": state["ema_params"], "bs": state["batch_stats"]}
    )[0]
    manager.close()
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}, step


def load_state(workdir: str, step: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """`({path: array}, step)` of every array of the train state saved as `step` (default: the
    latest) in `workdir`, restored onto this process's first device."""
    import jax
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)["state"],
    )
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    manager.close()
    flat = jax.tree_util.tree_flatten_with_path(state["state"])[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}, step


def relative_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """max |a - b| over every leaf, divided by max |b| over every leaf.

    Measured over the set as a whole: some leaves are mathematically zero (the bias of a Dense
    layer followed by BatchNorm gets a zero gradient) and hold only rounding noise, so a per-leaf
    relative difference would compare noise with noise.
    """
    assert a.keys() == b.keys()
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in b)
    return diff / max(float(np.abs(b[k]).max()) for k in b)


# --------------------------------------------------------------------------------------------
# Haiku references for the ResNet (tests/test_backbones.py, tests/test_export.py)

HAIKU_COUNTER = 1000  # EMA counter large enough that Haiku's zero-debiasing divides by 1.


def haiku_resnet_features(resnet_kwargs):
    """hk.transform_with_state of Haiku's own ResNet, returning its pre-pool maps per group.

    hk.nets.ResNet always mean-pools and applies logits; calling its submodules (built in its
    constructor, so they carry the real parameter names) in the order of ResNet.__call__ gives
    the dense maps with Haiku's own code for every conv, BN and block.
    """
    import haiku as hk
    import jax

    def forward(x, is_training):
        net = hk.nets.ResNet(num_classes=10, **resnet_kwargs)
        out = net.initial_conv(x)
        if not net.resnet_v2:
            out = jax.nn.relu(net.initial_batchnorm(out, is_training))
        out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
        features = {}
        for i, group in enumerate(net.block_groups):
            out = group(out, is_training, False)
            features[f"stage{i + 1}"] = out
        if net.resnet_v2:
            out = jax.nn.relu(net.final_batchnorm(out, is_training))
        features["out"] = out
        return features

    return hk.transform_with_state(forward)


def random_haiku_variables(fn, x, seed=0, *, batch_statistics=True):
    """Haiku params and BN state that make a parity test meaningful.

    Every BN scale/offset is random (the zero-initialised ones included), and the moving
    averages are the batch statistics of `x` (one Haiku training step from init gives them
    exactly, thanks to the debiasing) perturbed by noise, so inference mode differs from training
    mode while activations stay O(1). `batch_statistics=False` draws the averages at random
    instead (means N(0, 0.3), variances U(0.5, 2)) and compiles nothing: enough for a network of
    a few blocks.
    """
    import jax

    rng = np.random.default_rng(seed)
    # Shapes only (no RNG compile); conv weights drawn like Haiku's fan-in variance scaling.
    params, state = jax.eval_shape(lambda x: fn.init(jax.random.PRNGKey(0), x, True), x)
    state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state)
    params = {
        module: {
            name: (
                rng.uniform(0.5, 1.5, v.shape) if name == "scale"
                else rng.normal(0.0, 0.2, v.shape) if name == "offset"
                else rng.normal(0.0, 1.0, v.shape) / np.sqrt(np.prod(v.shape[:-1]))
            ).astype(np.float32)
            for name, v in leaves.items()
        }
        for module, leaves in params.items()
    }  # fmt: skip
    if not batch_statistics:
        return params, {
            module: {
                "average": avg,
                "hidden": avg,
                "counter": np.int32(HAIKU_COUNTER),
            }
            for module, leaves in state.items()
            for avg in [
                (rng.normal(0.0, 0.3, leaves["average"].shape) if module.endswith("mean_ema")
                 else rng.uniform(0.5, 2.0, leaves["average"].shape)).astype(np.float32)
            ]
        }  # fmt: skip
    _, state = jax.jit(fn.apply, static_argnums=4)(params, state, None, x, True)
    noisy = {}
    for module, leaves in state.items():
        avg = np.asarray(leaves["average"])
        if module.endswith("mean_ema"):
            avg = avg + rng.normal(0.0, 0.1, avg.shape) * np.abs(avg).mean()
        else:
            avg = avg * rng.uniform(0.7, 1.4, avg.shape)
        avg = avg.astype(np.float32)
        noisy[module] = {"average": avg, "hidden": avg, "counter": np.int32(HAIKU_COUNTER)}
    return params, noisy


def step_on(devices, setup, batch):
    """Initialises a train state and runs two train steps on `batch`, data-parallel over
    `devices`; returns the host copies of the final state and of the second step's metrics."""
    import functools

    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from common import train

    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    state = jax.jit(functools.partial(train.init_state, setup), out_shardings=replicated)(
        train.init_rng(0)
    )
    batch = train.to_global(batch, NamedSharding(mesh, P("data")))
    step = jax.jit(functools.partial(train.train_step, setup), out_shardings=replicated)
    state, _ = step(state, batch)
    state, metrics = step(state, batch)
    return jax.device_get(state), jax.device_get(metrics)


# ---------------------------------------------------------------------------------------------
# Loop-based float64 references of the losses (test_losses.py, test_detcon.py).


def normalize(x):
    """Rows of `x` scaled to unit length, in float64 (`[..., D]`)."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.maximum(np.sum(x * x, -1, keepdims=True), 1e-12))


def logsumexp(v):
    """`log(sum(exp(v)))` of a 1-D sequence, in float64, without overflow."""
    v = np.asarray(v, np.float64)
    m = v.max()
    return m + np.log(np.sum(np.exp(v - m)))


def ref_detcon(p1, p2, t1, t2, ids1, ids2, temperature, local_negatives=True):
    """Straight from the docs/METHODS.md §5.6 text, one query slot at a time (float64).

    Extension mirrored from the implementation: slots with a negative id are skipped entirely
    (no loss, never a candidate, never a positive).
    """
    total = 0.0
    for pred, key_x, key_s, id_q, id_x in [
        (p1, t2, t1, ids1, ids2),
        (p2, t1, t2, ids2, ids1),
    ]:
        bsz, nr = id_q.shape
        acc = 0.0
        for b in range(bsz):
            for r in range(nr):
                q = normalize(pred[b, r])
                my_id = id_q[b, r]
                if my_id < 0:
                    continue
                logits, positive = [], []
                # Cross-view block: every slot of the other view of every image.
                for u in range(bsz):
                    for v in range(nr):
                        if id_x[u, v] < 0:
                            continue
                        is_pos = u == b and id_x[u, v] == my_id
                        if u == b and not local_negatives and not is_pos:
                            continue
                        logits.append(q @ normalize(key_x[u, v]) / temperature)
                        positive.append(is_pos)
                # Same-view block: the query's own id in its own image is masked out.
                for u in range(bsz):
                    for v in range(nr):
                        if id_q[u, v] < 0:
                            continue
                        if u == b and (id_q[u, v] == my_id or not local_negatives):
                            continue
                        logits.append(q @ normalize(key_s[u, v]) / temperature)
                        positive.append(False)
                n_pos = sum(positive)
                if n_pos == 0:
                    continue  # weight 0
                lse = logsumexp(logits)
                ce = -sum((lg - lse) / n_pos for lg, ps in zip(logits, positive) if ps)
                n_dup = sum(1 for v in range(nr) if id_q[b, v] == my_id)
                acc += ce / n_dup
        total += acc / (bsz * nr)
    return total


def random_detcon_case(seed, b, r, d, num_ids, invalid_frac=0.0):
    """Random DetCon loss inputs: `(p1, p2, t1, t2)` float32 `[b, r, d]` and `(ids1, ids2)` int32
    `[b, r]` in `[0, num_ids)`, a fraction `invalid_frac` of them -1."""
    rng = np.random.default_rng(seed)
    arrs = [rng.normal(size=(b, r, d)).astype(np.float32) for _ in range(4)]
    ids = [rng.integers(0, num_ids, size=(b, r)).astype(np.int32) for _ in range(2)]
    if invalid_frac:
        for x in ids:
            x[rng.random(size=(b, r)) < invalid_frac] = -1
    return arrs, ids


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_two_processes(
    experiment: str, data_dir: str, workdir: str, **overrides
) -> list[subprocess.Popen]:
    """One training run as two processes on localhost (`jax.distributed` with gloo CPU
    collectives, 2 devices each), started and not waited for; stdout/stderr are pipes."""
    port = free_port()
    procs = []
    for pid in range(2):
        dist = {
            "distributed.initialize": True,
            "distributed.coordinator_address": f"localhost:{port}",
            "distributed.num_processes": 2,
            "distributed.process_id": pid,
            "distributed.cpu_collectives": "gloo",
        }
        procs.append(
            subprocess.Popen(
                cli_args(experiment, data_dir, workdir, **overrides, **dist),
                env=subprocess_env(2),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    return procs


# The FH pipeline's photographs and checks (test_fh_masks, test_beam_dask).
FH_SETTINGS = ((100.0, 50), (1000.0, 1000))


def skimage_photos(scale=2):
    """Real photographs shipped with scikit-image, downscaled by `scale` to keep tests fast."""
    import skimage.data
    from PIL import Image

    photos = {}
    for name in ("astronaut", "coffee", "chelsea"):
        image = Image.fromarray(getattr(skimage.data, name)())
        photos[name] = image.resize((image.width // scale, image.height // scale), Image.BILINEAR)
    return photos


def photo_folder(root, scale=2):
    """Writes the photos (two PNG, one JPEG) and returns {file name: pixels written}."""
    os.makedirs(root, exist_ok=True)
    originals = {}
    for name, image in skimage_photos(scale).items():
        # One JPEG: the pipeline must segment the decoded JPEG, not the array it came from.
        ext = "jpg" if name == "coffee" else "png"
        image.save(os.path.join(root, f"{name}.{ext}"), quality=90)
        originals[f"{name}.{ext}"] = np.asarray(image)
    return originals


def prepare_photo_folder(data_dir, root, name="photos"):
    """The `folder_images/<name>` dataset of the folder `root`, prepared in `data_dir`."""
    from common.data.folder_builders import FolderImages, ImageFolderConfig

    config = ImageFolderConfig(name=name, root_dir=str(root))
    builder = FolderImages(config=config, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def records_by_name(builder, split="train", key="image/filename"):
    """A split's examples as numpy, keyed by `key` (decoded file names or integer ids)."""
    import tensorflow_datasets as tfds

    records = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    out = {}
    for ex in records:
        name = ex[key]
        out[name.decode() if isinstance(name, bytes) else int(name)] = ex
    return out


def fh_reference(image, settings=FH_SETTINGS):
    """scikit-image's own FH segments of `image`, one map per setting."""
    from skimage.segmentation import felzenszwalb

    return np.stack([felzenszwalb(image, scale=s, sigma=0.8, min_size=m) for s, m in settings])


def check_fh_exact(derived, source, originals):
    """A derived FH dataset copies `source` unchanged and holds exactly skimage's segments."""
    assert derived.info.features["fh_masks"].shape == (2, None, None)
    out, src = records_by_name(derived), records_by_name(source)
    assert sorted(out) == sorted(originals)
    for name, ex in out.items():
        # Every source feature is copied unchanged.
        np.testing.assert_array_equal(ex["image"], src[name]["image"])
        # FH of the image as decoded by TFDS, exactly skimage's output.
        np.testing.assert_array_equal(ex["fh_masks"], fh_reference(ex["image"]))
        if name.endswith(".png"):  # lossless: also the original photograph's pixels
            np.testing.assert_array_equal(ex["image"], originals[name])
            np.testing.assert_array_equal(ex["fh_masks"], fh_reference(originals[name]))
