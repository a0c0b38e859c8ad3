"""The README's three commands: CI runs the first and the third; this runs the second (the main
job) exactly as written, plus overrides that shrink it to a few steps on the tiny dataset."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from tests import helpers


def readme_commands() -> list[str]:
    with open(os.path.join(helpers.REPO, "README.md")) as f:
        text = f.read()
    block = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_has_install_main_job_and_tests():
    install, main_job, tests = readme_commands()
    assert "pip install" in install and "python3.11" in install
    assert main_job.startswith("python -m common.train --config experiments/")
    assert "pytest" in tests


def test_main_job_command_runs_and_prints_its_evaluation(data_dir, tmp_path):
    args = shlex.split(readme_commands()[1])
    args = [a.replace("workdirs/", f"{tmp_path}/workdirs/") for a in args]
    args[0] = helpers.sys.executable
    # The main job prints its final evaluation beside the random network's (issue: what the
    # training bought), which the tiny overrides turn off elsewhere.
    overrides = {
        **helpers.TINY_OVERRIDES, "data.data_dir": data_dir, "total_steps": 3,
        "random_init_baseline": True,
    }  # fmt: skip
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    # As a user runs it: no TF_CPP_MIN_LOG_LEVEL from the test environment (common.console).
    env = helpers.subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    proc = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=600, cwd=helpers.REPO
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "evaluation at step 3" in proc.stdout
    assert "monitor/top1" in proc.stdout
    assert "step 3 beside the random initialisation" in proc.stdout
    assert "step 3/3 loss" in proc.stdout
    assert f"checkpoint: step 3 -> {tmp_path}" in proc.stdout

    # The default output is ours alone: no absl/Python INFO lines (Orbax's CheckpointManager
    # option dump among them), no TensorFlow/XLA C++ log line, no deprecation notice.
    output = proc.stdout + proc.stderr
    assert "CheckpointManagerOptions" not in output
    assert not re.search(r"^I\d{4} \d\d:\d\d:\d\d", output, re.M), output[:2000]
    assert not re.search(r"\.cc:\d+\]", output), output[:2000]
    assert "DeprecationWarning" not in output and "deprecated" not in output, output[:2000]
