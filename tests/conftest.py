"""Test session setup: 8 simulated CPU devices, quiet TensorFlow.

XLA_FLAGS must be set before JAX initialises its backend, so it happens here, at import time of
the first conftest, for the whole test session. Single-device tests use `jax.devices()[:1]`.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
