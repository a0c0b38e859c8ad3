"""Tests for common.safe_pickle: files a user hands us cannot run code, real layouts still load.

Each hostile payload is first shown to be live (plain `pickle.loads` runs it and creates a marker
file), then loaded through the allow-list unpickler, `load_haiku_checkpoint`, a `.npy` object
array and the `python -m common.export` command: refused with the global named, marker absent.
"""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from common import safe_pickle
from common.backbones import haiku_import
from tests import helpers


class _Reduce:
    """Pickles as `func(*args)`: what a crafted file asks the unpickler to call."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: str) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes that create `marker` when unpickled, the global refused first)."""
    import builtins

    touch = f"touch {marker}"
    return {
        # Raw protocol 0, as an attacker writes it: GLOBAL os.system, then call it.
        "os.system": (f"cos\nsystem\n(V{touch}\ntR.".encode(), "os.system"),
        "builtins.eval": (
            pickle.dumps(_Reduce(builtins.eval, (f"open({marker!r}, 'w').close()",)), protocol=2),
            "builtins.eval",
        ),
        "subprocess.Popen": (
            # Inside an innocent-looking checkpoint dict, next to a real array.
            pickle.dumps(
                {"params": {"w": np.ones(2)}, "x": _Reduce(subprocess.Popen, (["touch", marker],))},
                protocol=4,
            ),
            "subprocess.Popen",
        ),
        # A chain: getattr(__import__('os'), 'system')('touch ...'): no single global is os.system.
        "reduce chain": (
            f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V{touch}\ntR.".encode(),
            "builtins.getattr",
        ),
    }


def _npy_with_pickle(path, payload: bytes) -> None:
    """A `.npy` whose header says object array, followed by `payload` (what np.save writes)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        f.write(payload)


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen", "reduce chain"])
def test_hostile_pickles_are_refused_and_run_nothing(name, tmp_path):
    marker = str(tmp_path / "pwned")
    payload, refused = _payloads(marker)[name]
    # The payload is live: an ordinary unpickler runs it.
    live = pickle.loads(payload)
    if isinstance(live, dict):
        live["x"].wait()
    assert os.path.exists(marker), f"the {name} payload did not run under pickle.loads"
    os.remove(marker)

    pkl, npy = str(tmp_path / "ckpt.pkl"), str(tmp_path / "ckpt.npy")
    with open(pkl, "wb") as f:
        f.write(payload)
    _npy_with_pickle(npy, payload)
    match = f"refused to load global {refused}"
    with pytest.raises(safe_pickle.UnsafePickleError, match=match):
        safe_pickle.loads(payload)
    for path in (pkl, npy):
        with pytest.raises(safe_pickle.UnsafePickleError, match=f"{path}: {match}"):
            haiku_import.load_haiku_checkpoint(path)
    with pytest.raises(safe_pickle.UnsafePickleError, match=match):
        safe_pickle.load_npy(npy)
    assert not os.path.exists(marker)


def test_export_command_refuses_a_hostile_checkpoint(tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "pretrain_res50x1.pkl")
    with open(path, "wb") as f:
        f.write(_payloads(marker)["os.system"][0])
    proc = subprocess.run(
        [sys.executable, "-m", "common.export", "--format=torchvision",
         f"--out={tmp_path / 'out.npz'}", f"--haiku_checkpoint={path}"],
        capture_output=True, text=True, env=helpers.subprocess_env(), cwd=helpers.REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"common.export: error: {path}: refused to load global os.system"
    )
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.npz")


def _values():
    """What checkpoints hold: arrays of every dtype family, numpy scalars, containers, bytes."""
    arrays = {
        str(dtype): np.arange(6).reshape(2, 3).astype(dtype)
        for dtype in ("float32", "float64", "float16", "int8", "int32", "int64", "uint32", "bool")
    }
    return {
        "arrays": arrays,
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "empty": np.zeros((0, 4), np.float32),
        "unicode": np.array(["ab", "c"]),
        "record": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")]),
        "scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), 2.5, 7, None, "s"],
        "containers": (collections.OrderedDict(b=1, a=2), {1, 2}, frozenset({3}), complex(1, 2)),
        "bytes": [b"", b"\x00\xff"],
        "object": np.array([{"w": np.ones(3)}, None], dtype=object),
    }


def _assert_equal(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.flags.f_contiguous == b.flags.f_contiguous
        if a.dtype == object:
            for x, y in zip(a.ravel(), b.ravel()):
                _assert_equal(x, y)
        else:
            np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_checkpoint_contents_load_exactly_at_every_protocol(protocol):
    values = _values()
    _assert_equal(safe_pickle.loads(pickle.dumps(values, protocol=protocol)), values)


def test_numpy_1_pickles_and_np_save_object_arrays_load(tmp_path):
    values = {"w": np.arange(4, dtype=np.float32), "s": np.int32(3)}
    # numpy 1 wrote its reconstruction functions under numpy.core (numpy 2: numpy._core).
    old = pickle.dumps(values, protocol=0).replace(b"numpy._core", b"numpy.core")
    assert b"cnumpy.core.multiarray\n_reconstruct" in old
    _assert_equal(safe_pickle.loads(old), values)
    path = str(tmp_path / "tree.npy")
    np.save(path, values)
    _assert_equal(safe_pickle.load_npy(path).item(), values)
    np.save(path, np.arange(5))  # a plain array goes through numpy unchanged
    _assert_equal(safe_pickle.load_npy(path), np.arange(5))


def test_deepmind_classes_are_inert_stand_ins_and_other_classes_are_refused():
    # protocol 2 NEWOBJ of BYOL's NamedTuple, and a REDUCE of a byol optimiser state.
    data = (
        b"\x80\x02cbyol.byol_experiment\n_ByolExperimentState\nq\x00(K\x01K\x02tq\x01\x81q\x02"
        b"cbyol.utils.optimizers\nLarsState\n(K\x03tRq\x03\x86q\x04."
    )
    state, lars = safe_pickle.loads(data)
    assert isinstance(state, safe_pickle.StandIn) and state.args == (1, 2)
    assert type(state).__name__ == "_ByolExperimentState"
    assert state.pickled_module == "byol.byol_experiment" and lars.args == (3,)
    assert "byol" not in sys.modules  # never imported
    (adam,) = safe_pickle.loads(b"coptax._src.transform\nScaleByAdamState\n(K\x01tR\x85.")
    assert isinstance(adam, safe_pickle.StandIn) and adam.args == (1,)
    refused = [("collections", "namedtuple"), ("numpy", "load"), ("copyreg", "_reconstructor"),
               ("byolx", "A"), ("builtins", "getattr"), ("posix", "system")]  # fmt: skip
    for module, name in refused:
        with pytest.raises(safe_pickle.UnsafePickleError, match=rf"global {module}\.{name}:"):
            safe_pickle.loads(f"c{module}\n{name}\n.".encode())
    # The protocol-2 bytes helpers accept only what protocol 2 writes.
    with pytest.raises(safe_pickle.UnsafePickleError, match="only encode"):
        safe_pickle.loads(b"c_codecs\nencode\n(Vx\nVrot13\ntR.")
    with pytest.raises(safe_pickle.UnsafePickleError, match="only bytes"):
        safe_pickle.loads(b"c__builtin__\nbytes\n(I1000000000\ntR.")
