"""load_model on hostile files: every malicious file is built here with h5py/zipfile (no TensorFlow).

Each test asserts the exact error class, and where a file points outside
itself, that the target (a sentinel in tmp_path) is never opened: neither by
Python (open/os.open are watched) nor by the HDF5 C library (an inotify watch
on the sentinel, on Linux).
"""

import builtins
import copy
import ctypes
import ctypes.util
import errno
import io
import json
import os
import sys
import tempfile
import time
import warnings
import zipfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.errors import FastconvError, InvalidArgumentError
from fastconv.models import (ArchiveError, CorruptModelError, Layer, LimitExceededError, Limits,
                             ModelFormatError, UnknownFormatError, UnsafeModelError, UnsafeReferenceError,
                             UnsupportedLayerError, WeightMismatchError)

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "models")


def fixture(name):
    return os.path.join(HERE, name)


def read(name):
    with open(fixture(name), "rb") as f:
        return f.read()


def raises_exactly(cls, fn, *args, **kwargs):
    """Call ``fn`` and return the exception, asserting its class is exactly ``cls``."""
    with pytest.raises(FastconvError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"expected {cls.__name__}, got {type(info.value).__name__}: {info.value}"
    return info.value


def assert_nothing_imported(before):
    new = {m for m in set(sys.modules) - before if not m.startswith("encodings.")}  # zipfile's codecs
    assert not new, f"modules imported while loading: {sorted(new)}"


def keras_config(name):
    with zipfile.ZipFile(fixture(f"{name}.keras")) as z:
        return json.loads(z.read("config.json"))


def members_of(name):
    with zipfile.ZipFile(fixture(f"{name}.keras")) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """``members``: list of (name, bytes) or (name, bytes, compress_type)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(path, "w") as z:
            for m in members:
                name, data = m[0], m[1]
                ctype = m[2] if len(m) > 2 else compression
                z.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), data, compress_type=ctype)
    return path


def write_keras(tmp_path, config, weights_from="mobilenet_like", fname="m.keras"):
    m = members_of(weights_from)
    return write_zip(tmp_path / fname, [("metadata.json", m["metadata.json"]),
                                        ("config.json", json.dumps(config).encode()),
                                        ("model.weights.h5", m["model.weights.h5"])])


def layer_entry(config, name):
    return next(l for l in config["config"]["layers"] if l["name"] == name)


def weights_copy(tmp_path, name="tcn_1d"):
    dst = tmp_path / "w.weights.h5"
    dst.write_bytes(read(f"{name}.weights.h5"))
    return dst


# ---------------------------------------------------------------------- watching a sentinel

class _Inotify:
    """Records any open/read of one file by anyone in this process, C libraries included."""

    IN_ACCESS, IN_OPEN, IN_NONBLOCK = 0x1, 0x20, 0o4000

    def __init__(self, path):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN | self.IN_ACCESS) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def touched(self):
        try:
            return len(os.read(self.fd, 4096)) > 0
        except BlockingIOError:
            return False
        except OSError as exc:  # pragma: no cover
            if exc.errno == errno.EAGAIN:
                return False
            raise

    def close(self):
        os.close(self.fd)


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A file outside the model that a hostile file points at; asserts nobody opens it."""
    path = tmp_path / "sentinel.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.full((3, 4, 8), 7.0, np.float32)
        f["raw"] = np.full(64, 7.0, np.float32)
    raw = tmp_path / "sentinel.bin"
    raw.write_bytes(np.full(4096, 7.0, np.float32).tobytes())
    opened = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def spy(real):
        def wrapper(file, *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)) and "sentinel" in os.fsdecode(file):
                opened.append(os.fsdecode(file))
            return real(file, *a, **k)
        return wrapper
    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    monkeypatch.setattr(os, "open", spy(real_os_open))
    watches = []
    if sys.platform.startswith("linux"):
        watches = [_Inotify(path), _Inotify(raw)]

    class S:
        h5 = path
        bin = raw

        @staticmethod
        def assert_untouched():
            assert not opened, f"Python opened {opened}"
            for w in watches:
                assert not w.touched(), "the sentinel file was opened or read (by the HDF5 library?)"
    yield S
    for w in watches:
        w.close()


# ---------------------------------------------------------------------- code in the configuration

def _with_layer(name, entry_fn, base="mobilenet_like", before="re_lu"):
    cfg = keras_config(base)
    layers = cfg["config"]["layers"]
    ref = layer_entry(cfg, before)
    layers.insert(layers.index(ref), entry_fn(copy.deepcopy(ref["inbound_nodes"])))
    return cfg


def _lambda(function, inbound, **extra):
    return {"module": "keras.layers", "class_name": "Lambda", "name": "evil",
            "config": {"name": "evil", "function": function, "arguments": {}, **extra},
            "registered_name": None, "inbound_nodes": inbound}


CODE_FORMS = {
    # Lambda layer (Keras 3): marshalled bytecode
    "keras3_lambda": lambda ib: _lambda({"class_name": "__lambda__", "config": {
        "code": "4wEAAAAAAAAAAAAAAAEAAAAB", "defaults": None, "closure": None}}, ib),
    # serialization_lib form of a lambda
    "keras3_lambda_value": lambda ib: _lambda({"class_name": "__lambda__", "config": {
        "value": ["4wEAAAAAAAAAAAAAAAEAAAAB", None, None]}}, ib),
    # a Lambda naming a Python function to import
    "keras3_named_function": lambda ib: _lambda({"module": "os", "class_name": "function",
                                                 "config": "system", "registered_name": "system"}, ib),
    # Keras 2: bytecode list + function_type, and a function by module name
    "keras2_lambda": lambda ib: _lambda(["4wEAAAAA", None, None], ib, function_type="lambda",
                                        module="__main__"),
    "keras2_named_function": lambda ib: _lambda("system", ib, function_type="function", module="os"),
    # TensorFlow ops by name, pickled torch modules, JAX functions, SavedModel paths
    "tf_op_lambda": lambda ib: {"module": "keras.layers", "class_name": "TFOpLambda", "name": "evil",
                                "config": {"name": "evil", "function": "math.multiply"},
                                "inbound_nodes": ib},
    "torch_wrapper": lambda ib: {"module": "keras.layers", "class_name": "TorchModuleWrapper", "name": "evil",
                                 "config": {"name": "evil", "module": "gASV..."}, "inbound_nodes": ib},
    "tfsm_layer": lambda ib: {"module": "keras.layers", "class_name": "TFSMLayer", "name": "evil",
                              "config": {"name": "evil", "filepath": "/etc"}, "inbound_nodes": ib},
}


@pytest.mark.parametrize("form", sorted(CODE_FORMS))
def test_every_form_of_code_is_refused(tmp_path, form):
    mods = set(sys.modules)
    err = raises_exactly(UnsafeModelError, fastconv.load_model,
                         write_keras(tmp_path, _with_layer("evil", CODE_FORMS[form])))
    assert "evil" in str(err) and "never" in str(err)
    assert_nothing_imported(mods)


@pytest.mark.parametrize("key", ["kernel_initializer", "output_shape", "bias_regularizer"])
def test_a_serialized_lambda_anywhere_is_refused(tmp_path, key):
    cfg = keras_config("mobilenet_like")
    layer_entry(cfg, "conv2d")["config"][key] = {
        "class_name": "__lambda__", "config": {"value": ["4wEAAAAA", None, None]}}
    raises_exactly(UnsafeModelError, fastconv.load_model, write_keras(tmp_path, cfg))


def test_lambda_in_a_nested_model_is_refused(tmp_path):
    cfg = keras_config("misc_layers")
    nested = next(l for l in cfg["config"]["layers"] if l["class_name"] in ("Sequential", "Functional"))
    inner = nested["config"]["layers"]
    inner.append(_lambda({"class_name": "__lambda__", "config": {"code": "AAAA"}}, []))
    raises_exactly(UnsafeModelError, fastconv.load_model, write_keras(tmp_path, cfg, "misc_layers"))


def test_lambda_as_the_whole_model_is_refused(tmp_path):
    cfg = {"module": "keras.layers", "class_name": "Lambda",
           "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {"code": "AA"}}}}
    raises_exactly(UnsafeModelError, fastconv.load_model, write_keras(tmp_path, cfg))


def test_lambda_in_a_legacy_h5_is_refused(tmp_path):
    dst = tmp_path / "m.h5"
    dst.write_bytes(read("mobilenet_like.h5"))
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        relu = layer_entry(cfg, "re_lu")
        relu["class_name"] = "Lambda"
        relu["config"] = {"name": "re_lu", "function": ["4wEAAAAA", None, None], "function_type": "lambda",
                          "module": "__main__", "output_shape": None}
        f.attrs["model_config"] = json.dumps(cfg)
    raises_exactly(UnsafeModelError, fastconv.load_model, dst)


@pytest.mark.parametrize("module, class_name, registered", [
    ("os", "system", None), ("builtins", "eval", "eval"), ("subprocess", "Popen", None),
    ("keras.layers", "Conv2D", "evil>Conv2D"), ("keras_evil.layers", "Conv2D", None),
    ("keras.layers", "__import__", None)])
def test_module_and_class_names_are_never_imported(tmp_path, module, class_name, registered):
    cfg = keras_config("mobilenet_like")
    entry = layer_entry(cfg, "re_lu")
    entry["module"], entry["class_name"], entry["registered_name"] = module, class_name, registered
    mods = set(sys.modules)
    raises_exactly(UnsupportedLayerError, fastconv.load_model, write_keras(tmp_path, cfg))
    assert_nothing_imported(mods)


@pytest.mark.parametrize("activation", [
    {"module": "keras_evil", "class_name": "function", "config": "relu", "registered_name": None},
    {"module": "keras.activations", "class_name": "function", "config": "relu", "registered_name": "x>relu"},
    {"module": "os", "class_name": "function", "config": "system", "registered_name": None},
    "os.system"])
def test_activations_are_builtin_names_only(tmp_path, activation):
    cfg = keras_config("mobilenet_like")
    layer_entry(cfg, "conv2d")["config"]["activation"] = activation
    raises_exactly(UnsupportedLayerError, fastconv.load_model, write_keras(tmp_path, cfg))


class Scale(Layer):
    def parse(self, config):
        self.factor = float(config["factor"])

    def call(self, x, backend):
        return x * np.float32(self.factor)


def test_custom_layers_are_registered_in_code_only(tmp_path):
    def entry(ib):
        return {"module": "my_package.layers", "class_name": "Scale", "name": "scale",
                "registered_name": "my_package>Scale", "config": {"name": "scale", "factor": 2.0},
                "inbound_nodes": ib}
    cfg = _with_layer("scale", entry, before="softmax")
    layer_entry(cfg, "softmax")["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["scale", 0, 0]
    path = write_keras(tmp_path, cfg)
    raises_exactly(UnsupportedLayerError, fastconv.load_model, path)
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    try:
        fastconv.models.register_layer("my_package>Scale", Scale)
        assert "my_package>Scale" in fastconv.models.supported_layers()
        m = fastconv.load_model(path)
        base = fastconv.load_model(fixture("mobilenet_like.keras"))
        np.testing.assert_allclose(m.predict(x, outputs="scale", backend="reference"),
                                   2 * base.predict(x, outputs="flatten", backend="reference"), rtol=1e-6)
    finally:
        fastconv.models.unregister_layer("my_package>Scale")
    raises_exactly(UnsupportedLayerError, fastconv.load_model, path)


def test_register_layer_refuses_builtin_and_code_names():
    for name in ("Lambda", "my>Lambda", "TFOpLambda"):
        with pytest.raises(InvalidArgumentError, match="code"):
            fastconv.models.register_layer(name, Scale)
    with pytest.raises(InvalidArgumentError, match="override"):
        fastconv.models.register_layer("Conv2D", Scale)
    with pytest.raises(InvalidArgumentError, match="subclass"):
        fastconv.models.register_layer("Mine", object)


# ---------------------------------------------------------------------- HDF5

def test_external_link_is_refused_and_never_followed(tmp_path, sentinel):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars/0"]
        f["layers/conv1d/vars/0"] = h5py.ExternalLink(str(sentinel.h5), "/data")
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)
    sentinel.assert_untouched()


def test_external_link_as_a_whole_group_is_refused(tmp_path, sentinel):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        del f["layers"]
        f["layers"] = h5py.ExternalLink(str(sentinel.h5), "/")
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)
    sentinel.assert_untouched()


def test_soft_link_leaving_the_weights_tree_is_refused(tmp_path):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        f["elsewhere/kernel"] = np.asarray(f["layers/conv1d/vars/0"])
        del f["layers/conv1d/vars/0"]
        f["layers/conv1d/vars/0"] = h5py.SoftLink("/elsewhere/kernel")
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)


def test_soft_link_cycle_is_refused(tmp_path):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars"]
        f["layers/conv1d/vars"] = h5py.SoftLink("/layers/conv1d")
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)


def test_external_storage_is_refused_and_never_read(tmp_path, sentinel):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        shape = f["layers/conv1d/vars/0"].shape
        del f["layers/conv1d/vars/0"]
        f.create_dataset("layers/conv1d/vars/0", shape=shape, dtype=np.float32,
                         external=[(str(sentinel.bin), 0, h5py.h5f.UNLIMITED)])
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)
    sentinel.assert_untouched()


def test_virtual_dataset_is_refused_and_never_read(tmp_path, sentinel):
    dst = weights_copy(tmp_path)
    layout = h5py.VirtualLayout(shape=(3, 4, 8), dtype=np.float32)
    layout[...] = h5py.VirtualSource(str(sentinel.h5), "data", shape=(3, 4, 8))
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars/0"]
        f["layers/conv1d"].require_group("vars").create_virtual_dataset("0", layout)
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)
    sentinel.assert_untouched()


def test_filter_that_would_load_a_plugin_is_refused(tmp_path):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        data = np.asarray(f["layers/conv1d/vars/1"])
        del f["layers/conv1d/vars/1"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(data.shape)
        dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL)  # bzip2: a plugin, not built in
        sid = h5py.h5s.create_simple(data.shape)
        dsid = h5py.h5d.create(f["layers/conv1d/vars"].id, b"1", h5py.h5t.NATIVE_FLOAT, sid, dcpl=dcpl)
        h5py.Dataset(dsid)[...] = data
    raises_exactly(UnsafeReferenceError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)


def test_shape_bomb_over_the_limit(tmp_path):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars/0"]
        f.create_dataset("layers/conv1d/vars/0", shape=(1 << 20, 1 << 20, 8), dtype=np.float32,
                         chunks=(1, 1, 8))  # 32 TiB declared, nothing stored
    size = os.path.getsize(dst)
    err = raises_exactly(LimitExceededError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)
    assert err.limit == "max_weight_bytes"
    assert os.path.getsize(dst) == size


def test_shape_bomb_under_the_limit_storing_nothing(tmp_path):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars/0"]
        f.create_dataset("layers/conv1d/vars/0", shape=(1 << 14, 1 << 10), dtype=np.float32)  # 64 MiB
    raises_exactly(CorruptModelError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)


def test_compressed_dataset_bomb(tmp_path):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        del f["layers/conv1d/vars/0"]
        f.create_dataset("layers/conv1d/vars/0", data=np.zeros((1 << 21,), np.float32), compression="gzip",
                         chunks=(1 << 18,))
    err = raises_exactly(LimitExceededError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst,
                         limits=Limits(max_compression_ratio=50))
    assert err.limit == "max_compression_ratio"


def test_parameter_and_weight_byte_limits(tmp_path):
    err = raises_exactly(LimitExceededError, fastconv.load_model, fixture("mobilenet_like.keras"),
                         limits=Limits(max_params=1000))
    assert err.limit == "max_params"
    err = raises_exactly(LimitExceededError, fastconv.load_model, fixture("mobilenet_like.h5"),
                         limits=Limits(max_weight_bytes=4000))
    assert err.limit == "max_weight_bytes"
    fastconv.load_model(fixture("mobilenet_like.keras"), limits=Limits(max_params=10**6))


@pytest.mark.parametrize("change, dtype", [("filters", None), ("kernel_size", None), ("ndim", None),
                                           (None, np.int32), (None, "S8")])
def test_weights_that_do_not_fit_the_layer_config(tmp_path, change, dtype):
    dst = weights_copy(tmp_path)
    with h5py.File(dst, "r+") as f:
        k = np.asarray(f["layers/conv1d/vars/0"])  # (kernel, in, filters)
        if change == "filters":
            k = np.concatenate([k, k], axis=-1)
        elif change == "kernel_size":
            k = np.concatenate([k, k], axis=0)
        elif change == "ndim":
            k = k[None]
        del f["layers/conv1d/vars/0"]
        f["layers/conv1d/vars/0"] = k.astype(dtype) if dtype is not None else k
    raises_exactly(WeightMismatchError, fastconv.load_model, fixture("tcn_1d.json"), weights=dst)


def test_batchnorm_statistics_of_different_lengths(tmp_path):
    dst = weights_copy(tmp_path, "mobilenet_like")
    with h5py.File(dst, "r+") as f:
        v = np.asarray(f["layers/batch_normalization/vars/3"])
        del f["layers/batch_normalization/vars/3"]
        f["layers/batch_normalization/vars/3"] = np.concatenate([v, v])
    raises_exactly(WeightMismatchError, fastconv.load_model, fixture("mobilenet_like.json"), weights=dst)


def test_huge_model_config_attribute(tmp_path):
    dst = tmp_path / "m.h5"
    dst.write_bytes(read("sign_mnist.h5"))
    err = raises_exactly(LimitExceededError, fastconv.load_model, dst, limits=Limits(max_config_bytes=1000))
    assert "model_config" in str(err)


def test_truncated_and_corrupted_hdf5(tmp_path):
    data = read("sign_mnist.h5")
    p = tmp_path / "m.h5"
    p.write_bytes(data[: len(data) // 2])
    raises_exactly(CorruptModelError, fastconv.load_model, p)
    p.write_bytes(data[:4096])
    raises_exactly(CorruptModelError, fastconv.load_model, p)


# ---------------------------------------------------------------------- .keras archives

def test_zip_bomb_by_ratio(tmp_path):
    m = members_of("sign_mnist")
    path = write_zip(tmp_path / "m.keras", [("metadata.json", m["metadata.json"]),
                                            ("config.json", m["config.json"]),
                                            ("model.weights.h5", bytes(8 << 20))],
                     compression=zipfile.ZIP_DEFLATED)
    err = raises_exactly(LimitExceededError, fastconv.load_model, path, limits=Limits(max_compression_ratio=100))
    assert err.limit == "max_compression_ratio"


def test_zip_member_and_total_size_limits(tmp_path):
    path = fixture("sign_mnist.keras")
    err = raises_exactly(LimitExceededError, fastconv.load_model, path, limits=Limits(max_archive_bytes=1000))
    assert err.limit == "max_archive_bytes"
    err = raises_exactly(LimitExceededError, fastconv.load_model, path, limits=Limits(max_config_bytes=1000))
    assert err.limit == "max_config_bytes"
    m = members_of("sign_mnist")
    many = [(f"assets/{i}", b"") for i in range(100)]
    big = write_zip(tmp_path / "many.keras", list(m.items()) + many)
    err = raises_exactly(LimitExceededError, fastconv.load_model, big)
    assert err.limit == "max_archive_members"


def _patch_sizes(data, name, new_size):
    """A zip whose headers claim ``name`` decompresses to ``new_size`` bytes (a lying header)."""
    data = bytearray(data)
    enc = name.encode()
    for sig, off_size in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = 0
        while (i := data.find(sig, i)) >= 0:
            nlen = int.from_bytes(data[i + (26 if sig == b"PK\x03\x04" else 28):][:2], "little")
            start = i + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[start:start + nlen]) == enc:
                data[i + off_size:i + off_size + 4] = new_size.to_bytes(4, "little")
            i += 4
    return bytes(data)


def test_zip_header_lying_about_sizes(tmp_path):
    m = members_of("sign_mnist")
    ok = write_zip(tmp_path / "ok.keras", list(m.items()), compression=zipfile.ZIP_DEFLATED).read_bytes()
    p = tmp_path / "m.keras"
    p.write_bytes(_patch_sizes(ok, "config.json", 100))  # the data inflates to more than claimed
    raises_exactly(CorruptModelError, fastconv.load_model, p)


@pytest.mark.parametrize("drop", ["config.json", "model.weights.h5"])
def test_missing_members(tmp_path, drop):
    m = members_of("sign_mnist")
    del m[drop]
    raises_exactly(ArchiveError, fastconv.load_model, write_zip(tmp_path / "m.keras", list(m.items())))


@pytest.mark.parametrize("name", ["evil.py", "model.weights.npz", "model.weights.json", "__init__.py",
                                  "config.json.bak"])
def test_unexpected_members(tmp_path, name):
    m = members_of("sign_mnist")
    raises_exactly(ArchiveError, fastconv.load_model,
                   write_zip(tmp_path / "m.keras", list(m.items()) + [(name, b"print('hi')")]))


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "assets/../../x", "C:/x", "assets\\..\\x",
                                  "assets/./x", "assets/\x01x", "./config.json"])
def test_path_like_member_names(tmp_path, name):
    m = members_of("sign_mnist")
    raises_exactly(ArchiveError, fastconv.load_model,
                   write_zip(tmp_path / "m.keras", list(m.items()) + [(name, b"x")]))


def test_duplicate_members(tmp_path):
    m = members_of("sign_mnist")
    raises_exactly(ArchiveError, fastconv.load_model,
                   write_zip(tmp_path / "m.keras", list(m.items()) + [("config.json", b"{}")]))


def test_odd_compression_and_encryption(tmp_path):
    m = members_of("sign_mnist")
    items = [(n, d, zipfile.ZIP_BZIP2 if n == "config.json" else zipfile.ZIP_STORED) for n, d in m.items()]
    raises_exactly(ArchiveError, fastconv.load_model, write_zip(tmp_path / "b.keras", items))
    data = bytearray(write_zip(tmp_path / "e.keras", list(m.items())).read_bytes())
    i = data.find(b"PK\x01\x02")  # set the 'encrypted' flag of the first central directory entry
    while i >= 0:
        data[i + 8] |= 1
        i = data.find(b"PK\x01\x02", i + 4)
    p = tmp_path / "enc.keras"
    p.write_bytes(bytes(data))
    raises_exactly(ArchiveError, fastconv.load_model, p)


def test_assets_folder_is_tolerated(tmp_path):
    m = members_of("sign_mnist")
    fastconv.load_model(write_zip(tmp_path / "m.keras", list(m.items()) + [("assets/", b""),
                                                                           ("assets/vocab.txt", b"a")]))


def test_deeply_nested_config(tmp_path):
    m = members_of("sign_mnist")
    deep = b"[" * 100_000 + b"]" * 100_000
    t0 = time.perf_counter()
    err = raises_exactly(LimitExceededError, fastconv.load_model,
                         write_zip(tmp_path / "m.keras", [("config.json", deep),
                                                          ("model.weights.h5", m["model.weights.h5"])]))
    assert err.limit == "max_json_depth" and time.perf_counter() - t0 < 5
    p = tmp_path / "deep.json"
    p.write_bytes(b'{"class_name": "Sequential", "config": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001)
    raises_exactly(LimitExceededError, fastconv.load_model, p, weights=fixture("sign_mnist.weights.h5"))
    # brackets inside strings do not count
    cfg = keras_config("sign_mnist")
    cfg["config"]["name"] = "[" * 10_000
    fastconv.load_model(write_keras(tmp_path, cfg, "sign_mnist", "ok.keras"))


def test_huge_config(tmp_path):
    cfg = keras_config("sign_mnist")
    cfg["config"]["padding"] = "x" * (2 << 20)
    err = raises_exactly(LimitExceededError, fastconv.load_model, write_keras(tmp_path, cfg, "sign_mnist"),
                         limits=Limits(max_config_bytes=1 << 20))
    assert err.limit == "max_config_bytes"


# ---------------------------------------------------------------------- not a model at all

def test_empty_and_foreign_files(tmp_path):
    p = tmp_path / "m.keras"
    p.write_bytes(b"")
    raises_exactly(UnknownFormatError, fastconv.load_model, p)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert "PNG" in str(raises_exactly(UnknownFormatError, fastconv.load_model, p))
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    raises_exactly(UnknownFormatError, fastconv.load_model, p)
    w = tmp_path / "w.weights.h5"
    w.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    raises_exactly(UnknownFormatError, fastconv.load_model, fixture("sign_mnist.json"), weights=w)


def test_truncated_archive(tmp_path):
    data = read("mobilenet_like.keras")
    p = tmp_path / "m.keras"
    for cut in (len(data) // 2, len(data) - 10, 40):
        p.write_bytes(data[:cut])
        raises_exactly(CorruptModelError, fastconv.load_model, p)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_not_opened(tmp_path):
    p = tmp_path / "m.keras"
    os.mkfifo(p)
    t0 = time.perf_counter()
    raises_exactly(ModelFormatError, fastconv.load_model, p)
    assert time.perf_counter() - t0 < 2


def test_limits_objects():
    with pytest.raises(InvalidArgumentError, match="max_params"):
        Limits(max_params=0)
    with pytest.raises(InvalidArgumentError, match="limits"):
        fastconv.load_model(fixture("sign_mnist.keras"), limits={"max_params": 5})
    lim = Limits()
    assert lim.max_file_bytes >= 1 << 30 and lim.max_nesting == 32
    # keyword shortcuts override the Limits object
    with pytest.raises(LimitExceededError):
        fastconv.load_model(fixture("sign_mnist.keras"), limits=Limits(), max_layers=2)


# ---------------------------------------------------------------------- fuzzing

FUZZ_FILES = ["sign_mnist.keras", "mobilenet_like.h5", "tcn_1d.keras", "sign_mnist.weights.h5"]
_FUZZ_DATA = {name: read(name) for name in FUZZ_FILES}


def _mutate(data, kind, pos, val, n):
    if kind == "flip":
        b = bytearray(data)
        for i in range(n):
            j = (pos + i * 7919) % len(b)
            b[j] ^= val or 0xFF
        return bytes(b)
    if kind == "truncate":
        return data[: pos % len(data)]
    if kind == "insert":
        p = pos % len(data)
        return data[:p] + bytes([val]) * n + data[p:]
    raise AssertionError(kind)


def _mutate_member(data, member, kind, pos, val, n):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        items = [(i.filename, z.read(i)) for i in z.infolist()]
    out = []
    for name, d in items:
        if name == member:
            if kind == "drop":
                continue
            d = _mutate(d, "flip" if kind == "edit" else kind, pos, val, n) if d else d
        out.append((name, d))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, d in out:
            z.writestr(name, d)
    return buf.getvalue()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FUZZ_FILES),
       kind=st.sampled_from(["flip", "truncate", "insert", "member"]),
       member=st.sampled_from(["config.json", "model.weights.h5", "metadata.json"]),
       member_kind=st.sampled_from(["edit", "truncate", "drop"]),
       pos=st.integers(0, 1 << 30), val=st.integers(0, 255), n=st.integers(1, 16))
def test_fuzzed_files_give_only_fastconv_errors(name, kind, member, member_kind, pos, val, n):
    data = _FUZZ_DATA[name]
    if kind == "member" and name.endswith(".keras"):
        data = _mutate_member(data, member, member_kind, pos, val, n)
    elif kind != "member":
        data = _mutate(data, kind, pos, val, n)
    suffix = name.split(".", 1)[1]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, f"m.{suffix}")
        with open(p, "wb") as f:
            f.write(data)
        t0 = time.perf_counter()
        try:
            if suffix == "weights.h5":
                fastconv.load_model(fixture("sign_mnist.json"), weights=p)
            else:
                fastconv.load_model(p)
        except (ModelFormatError, UnsupportedLayerError):
            pass
        assert time.perf_counter() - t0 < 10


_CONFIGS = {name: keras_config(name) for name in ("sign_mnist", "mobilenet_like", "misc_layers")}
_ODD_VALUES = [None, -1, 0, 7, 10**30, 1e308, -0.5, "x", "same", "channels_first", [], {}, [1], [-1, 2],
               [[1, 2], [3, 4]], True, {"class_name": "x"}, {"class_name": "__numpy__", "config": {}}]


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, prefix + (i,))


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_CONFIGS)), picks=st.lists(st.tuples(st.integers(0, 1 << 20),
                                                                        st.sampled_from(range(len(_ODD_VALUES)))),
                                                              min_size=1, max_size=3))
def test_fuzzed_configs_give_only_fastconv_errors(name, picks):
    """Values anywhere in a layer's config replaced by values of the wrong type or range."""
    cfg = copy.deepcopy(_CONFIGS[name])
    for where, which in picks:
        paths = [p for p in _json_paths(cfg) if "layers" in p and len(p) > 3]
        target = paths[where % len(paths)]
        node = cfg
        for k in target[:-1]:
            node = node[k]
        node[target[-1]] = copy.deepcopy(_ODD_VALUES[which])
    members = members_of(name)
    members["config.json"] = json.dumps(cfg).encode()
    with tempfile.TemporaryDirectory() as d:
        p = write_zip(os.path.join(d, "m.keras"), list(members.items()))
        t0 = time.perf_counter()
        try:
            fastconv.load_model(p)
        except (ModelFormatError, UnsupportedLayerError):
            pass
        assert time.perf_counter() - t0 < 10


def test_inconsistent_graph_fails_at_predict_with_a_fastconv_error(tmp_path):
    cfg = keras_config("mobilenet_like")
    add = layer_entry(cfg, "add")
    add["inbound_nodes"][0]["args"][0][1]["config"]["keras_history"] = ["input_layer", 0, 0]
    m = fastconv.load_model(write_keras(tmp_path, cfg))
    with pytest.raises(InvalidArgumentError, match="'add' \\(Add\\)"):
        m.predict(np.zeros((1, 16, 16, 3), np.float32), backend="reference")
