"""Experiment configs (`experiments/*.py`): loading one stays cheap."""

import glob
import json
import os
import subprocess
import sys

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
