"""Experiment configs (`experiments/*.py`): loading one stays cheap."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests import helpers

# Imports every experiment module and builds its local and its paper-scale variant (ImageNet,
# or VideoNet for VITO), then reports what got imported.
_LOAD_ALL = """
import importlib, json, sys
loaded = []
for name in sys.argv[1:]:
    module = importlib.import_module("experiments." + name)
    for variant in ("local", "imagenet", "videonet"):
        try:
            module.get_config(variant)
        except ValueError as e:
            if "variant" not in str(e):
                raise
            continue
        loaded.append(f"{name}:{variant}")
heavy = sorted(m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules)
print(json.dumps({"loaded": loaded, "heavy": heavy}))
"""


def test_loading_every_experiment_config_imports_no_tensorflow():
    # A fresh interpreter: this test session has imported TensorFlow long ago.
    names = sorted(
        os.path.basename(p)[:-3]
        for p in glob.glob(os.path.join(helpers.REPO, "experiments", "*.py"))
        if os.path.basename(p) not in ("__init__.py", "base.py")
    )
    assert "byol" in names and "vito" in names
    env = {**os.environ, "PYTHONPATH": helpers.REPO}
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_ALL, *names],
        cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["loaded"]) == 2 * len(names)
    assert report["heavy"] == [], f"loading the experiment configs imported {report['heavy']}"


def _untyped_none_fields(config, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose value is a bare `None`: `--config.<field>=...` cannot
    override those (ml_collections needs a type); a `config_dict.placeholder(T)` can."""
    import ml_collections

    found = []
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            found += _untyped_none_fields(value, f"{prefix}{key}.")
        elif value is None and config.get_type(key) is type(None):
            found.append(prefix + key)
    return found


def test_every_config_field_can_be_overridden_from_the_command_line(monkeypatch):
    """A researcher overrides any documented option on the command line; a field left as a bare
    `None` fails there with ml_collections' "Type NoneType ... is not supported for overriding"
    (as `data.eval_image_size` did)."""
    import importlib

    from absl import flags
    from ml_collections import config_flags

    bare = []
    for path in glob.glob(os.path.join(helpers.REPO, "experiments", "*.py")):
        name = os.path.basename(path)[:-3]
        if name in ("__init__", "base"):
            continue
        module = importlib.import_module(f"experiments.{name}")
        for variant in ("local", "imagenet", "videonet"):
            try:
                config = module.get_config(variant)
            except ValueError as e:
                if "variant" not in str(e):
                    raise
                continue
            bare += [f"{name}:{variant} {field}" for field in _untyped_none_fields(config)]
    assert bare == [], f"fields not overridable from the command line: {bare}"

    # The override itself, through the flag parser the CLIs use (config_flags reads the
    # override flags from sys.argv when the config flag is defined).
    path = os.path.join(helpers.REPO, "experiments", "byol.py")
    argv = ["evaluate", f"--config={path}:local", "--config.data.eval_image_size=96"]
    monkeypatch.setattr(sys, "argv", argv)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    values(argv)
    assert values.config.data.eval_image_size == 96


@pytest.mark.parametrize("method", ["vito", "moclr"])
def test_video_local_configs_evaluate_images_on_the_image_dataset(method):
    """VITO's `local` configs pretrain on `synthetic_videos` (no `image` feature): every
    evaluator but label propagation must read `synthetic_scenes`, including ones added to the
    base config later (a missing one fails only at the end of training)."""
    from experiments import vito

    config = vito.get_config(f"local,method={method}")
    assert config.data.name == "synthetic_videos"
    image_evals = [name for name in config.evals if name != "label_propagation"]
    assert {"linear_probe", "knn", "rank"} <= set(image_evals)
    assert {config.evals[name].dataset for name in image_evals} == {"synthetic_scenes"}
