"""The install extras: every platform gets the same JAX version (nothing is downloaded)."""

from __future__ import annotations

import importlib.metadata
import os
import runpy

import setuptools
from packaging.requirements import Requirement

from tests import helpers


def _setup_arguments(monkeypatch) -> dict:
    """The keyword arguments setup.py hands to `setuptools.setup`, as pip would see them."""
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(os.path.join(helpers.REPO, "setup.py"))
    return captured


def _by_name(requirements) -> dict[str, Requirement]:
    parsed = [Requirement(r) for r in requirements]
    return {r.name: r for r in parsed}


def test_accelerator_extras_pin_the_jax_of_the_cpu_install(monkeypatch):
    args = _setup_arguments(monkeypatch)
    base = _by_name(args["install_requires"])
    extras = args["extras_require"]
    # The CPU install: jax and jaxlib (which carries the CPU backend), no backend extra forced.
    assert base["jax"].extras == set() and base["jaxlib"].extras == set()
    assert base["jax"].specifier == base["jaxlib"].specifier and str(base["jax"].specifier)
    for extra in ("tpu", "cuda12"):
        jax_req = _by_name(extras[extra])["jax"]
        assert jax_req.extras == {extra}, (extra, jax_req)
        assert jax_req.specifier == base["jax"].specifier, (extra, jax_req, base["jax"])
    # CI installs `.[all]`: it must not pull libtpu or the CUDA wheels.
    assert not any(Requirement(r).name == "jax" for r in extras["all"]), extras["all"]

    # The JAX installed from this setup.py is one the pins allow, and it defines both extras with
    # its own jaxlib version: `pip install -e ".[tpu]"` asks for exactly what JAX ships.
    installed = importlib.metadata.version("jax")
    assert base["jax"].specifier.contains(installed), installed
    assert base["jaxlib"].specifier.contains(importlib.metadata.version("jaxlib"))
    metadata = importlib.metadata.metadata("jax")
    assert {"tpu", "cuda12"} <= set(metadata.get_all("Provides-Extra"))
    for extra in ("tpu", "cuda12"):
        pinned = [Requirement(r) for r in metadata.get_all("Requires-Dist")
                  if Requirement(r).name == "jaxlib" and Requirement(r).marker
                  and Requirement(r).marker.evaluate({"extra": extra})]  # fmt: skip
        assert pinned and all(r.specifier.contains(installed) for r in pinned), (extra, pinned)
