"""The random network's figures beside a trained one's: what the training bought.

The papers' tables start from a random-initialisation row; a run's final evaluation means little
without it (on easy data a random ResNet already clusters and classifies well). `compare` runs
the same evaluators, with the same options, on the config's fresh initialisation (seed
`config.seed`, as `python -m common.evaluate --init`), and prints both columns and their
difference.

The random figures are computed once and cached as JSON: under `<data_dir>/random_init_evals/`
when the config names a data directory (shared by every run on that data), else under
`<workdir>/random_init_evals/`. The file name is a hash of everything the figures depend on:
the config without its training-only fields (`TRAINING_ONLY`), the evaluators, and a fingerprint
of the repository's Python sources (outside tests and benchmarks), so that a change of network,
evaluator or dataset code (the embedded datasets are rendered by it) computes them afresh
instead of reading stale ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax

# Config fields that change how a network trains but not its initialisation or its evaluation
# (`ema` stays in the key: its `init` decides the target network's initial weights, which an
# evaluator may score with `network=target`).
TRAINING_ONLY = (
    "total_steps", "num_epochs", "log_every_steps", "eval_every_steps", "pictures_every_steps",
    "checkpoint", "loss", "augment", "optimizer", "distributed", "random_init_baseline",
)  # fmt: skip
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SKIPPED_DIRS = {"tests", "benchmarks", "notebooks", "docs", "__pycache__"}


@functools.cache
def code_fingerprint(root: str = _REPO) -> str:
    """sha256 of the repository's Python sources (paths and bytes), tests and benchmarks aside."""
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(top, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def cache_key(config, names: list[str]) -> str:
    """Hash of what the random network's figures depend on (see the module docstring)."""
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in plain.items() if k not in TRAINING_ONLY}
    text = json.dumps(
        {"config": kept, "evaluators": sorted(names), "code": code_fingerprint()},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(config, workdir: str, names: list[str]) -> str:
    data_dir = config.get("data", {}).get("data_dir") or os.path.join(workdir, "")
    base = os.path.join(os.path.expanduser(data_dir), "random_init_evals")
    return os.path.join(base, f"{config.method}_{cache_key(config, names)}.json")


def random_init_results(setup, workdir: str, names: list[str], *, mesh) -> tuple[dict, str]:
    """The evaluators `names` on the fresh initialisation of `setup` (cached); (results, path).

    Every process runs the evaluators when the cache misses (they are collective); process 0
    writes the file (atomically: a partial file never looks complete). With several processes
    the cache is not read (each would have to see the same file), only written.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from common import train
    from common.eval import run_evaluators

    config = setup.config
    path = cache_path(config, workdir, names)
    if jax.process_count() == 1 and os.path.exists(path):
        with open(path) as f:
            return json.load(f)["results"], path
    init = jax.jit(
        functools.partial(train.init_state, setup), out_shardings=NamedSharding(mesh, P())
    )
    state = init(train.init_rng(config.seed))
    # No workdir: the random network's pictures would overwrite the run's pictures of step 0.
    results = run_evaluators(setup, state, mesh=mesh, workdir=None, names=names)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"results": results, "seed": int(config.seed), "evaluators": names}, f)
        os.replace(tmp, path)
    return results, path


def format_comparison(trained: dict, random: dict, step: int) -> str:
    """The table: one row per figure, trained | random init | trained - random."""
    width = max([len(k) for k in trained] + [6])
    lines = [
        f"step {step} beside the random initialisation (same evaluators):",
        f"  {'':<{width}}  {'trained':>8}  {'random':>8}  {'change':>8}",
    ]
    for key, value in trained.items():
        if key in random:
            r = random[key]
            lines.append(f"  {key:<{width}}  {value:8.4f}  {r:8.4f}  {value - r:+8.4f}")
    return "\n".join(lines)


def compare(setup, state, results: dict, workdir: str) -> dict:
    """Prints the final `results` beside the random network's (computed once, cached) and
    returns the random network's figures. Off when `config.random_init_baseline` is False."""
    if not results or not setup.config.get("random_init_baseline", True):
        return {}
    from common import train

    names = list(dict.fromkeys(key.split("/", 1)[0] for key in results))  # the run's order
    random, path = random_init_results(setup, workdir, names, mesh=train.create_mesh())
    if jax.process_index() == 0:
        print(format_comparison(results, random, int(state.step)))
        print(f"  (random initialisation: {path})", flush=True)
    return random
