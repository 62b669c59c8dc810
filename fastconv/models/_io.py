"""Reading Keras model files with json, zipfile and h5py only.

Three containers are understood:

* Keras 3 ``.keras`` archives: a zip holding ``config.json`` (the architecture)
  and ``model.weights.h5``, whose variables sit at paths derived from the
  objects (``layers/<snake_case class name>[_<k>]/vars/<i>``, nested models under
  their own ``layers/`` group), not at the layers' names;
* legacy full-model HDF5 (``model.save("m.h5")`` in Keras 2 and 3): the
  ``model_config`` attribute holds the architecture JSON, and
  ``model_weights/<layer name>`` holds each layer's variables, listed in
  order by its ``weight_names`` attribute (``.../kernel:0`` in Keras 2);
* weights-only files (``save_weights``: either layout) with the architecture
  given separately (a ``config.json`` or the JSON of ``model.to_json()``).

Nothing read from a file is ever imported, evaluated or executed.
"""

import io
import json
import os
import re
import zipfile

import h5py
import numpy as np

from .errors import ModelFormatError

MiB = 1 << 20


def _name(path):
    return os.fspath(path) if isinstance(path, os.PathLike) else path


def snake_case(class_name):
    """Keras's object-path naming of a class (``"Conv2DTranspose"`` -> ``"conv2d_transpose"``,
    ``"PReLU"`` -> ``"p_re_lu"``)."""
    s = re.sub(r"\W+", "", class_name)
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", s)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _parse_json(text, where, limits):
    if len(text) > limits["max_config_bytes"]:
        raise ModelFormatError(
            f"{where}: the architecture JSON is {len(text)} bytes, over the limit "
            f"max_config_bytes={limits['max_config_bytes']}")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        cfg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{where}: the architecture is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or "class_name" not in cfg or "config" not in cfg:
        raise ModelFormatError(
            f"{where}: expected a serialized Keras model (a JSON object with 'class_name' and "
            f"'config'); got {type(cfg).__name__}"
            + (f" with keys {sorted(cfg)[:8]}" if isinstance(cfg, dict) else ""))
    return cfg


def _open_h5(source, where):
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{where}: not a readable HDF5 file: {exc}") from None


def _check_size(path, limit, what):
    size = os.path.getsize(path)
    if size > limit:
        raise ModelFormatError(f"{path!r}: {what} is {size} bytes, over the limit {limit}")


class _Sources:
    """What load_model found: the architecture dict and a weights store."""

    def __init__(self, config, store, files):
        self.config = config
        self.store = store
        self.files = files  # h5py files to close once the weights are read


def read(path, weights, limits):
    """Return a :class:`_Sources` for ``load_model(path, weights)``."""
    path = _name(path)
    if not isinstance(path, str):
        raise ModelFormatError(
            f"load_model: argument `path` must be a path (str or os.PathLike); got {type(path).__name__}")
    if os.path.isdir(path):
        raise ModelFormatError(
            f"load_model: {path!r} is a directory (a TensorFlow SavedModel?); expected a .keras "
            f"archive, a legacy .h5 model, or an architecture JSON with weights=")
    if not os.path.isfile(path):
        raise ModelFormatError(f"load_model: argument `path`: no such file {path!r}")
    files = []
    config = store = None
    if zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ModelFormatError(f"{path!r}: a damaged .keras archive: {exc}") from None
        with zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelFormatError(
                    f"{path!r}: a zip file without config.json is not a Keras .keras archive "
                    f"(it holds {sorted(names)[:6]})")
            info = zf.getinfo("config.json")
            if info.file_size > limits["max_config_bytes"]:
                raise ModelFormatError(
                    f"{path!r}: config.json is {info.file_size} bytes, over the limit "
                    f"max_config_bytes={limits['max_config_bytes']}")
            config = _parse_json(zf.read("config.json"), f"{path!r} (config.json)", limits)
            if weights is None:
                if "model.weights.h5" not in names:
                    raise ModelFormatError(
                        f"{path!r}: the archive has no model.weights.h5 (sharded or npz weights are "
                        f"not supported); pass the weights file as weights=")
                info = zf.getinfo("model.weights.h5")
                if info.file_size > limits["max_weight_bytes"]:
                    raise ModelFormatError(
                        f"{path!r}: model.weights.h5 is {info.file_size} bytes, over the limit "
                        f"max_weight_bytes={limits['max_weight_bytes']}")
                h5 = _open_h5(io.BytesIO(zf.read("model.weights.h5")), f"{path!r} (model.weights.h5)")
                files.append(h5)
                store = KerasStore(h5, f"{path!r} (model.weights.h5)")
    elif h5py.is_hdf5(path):
        h5 = _open_h5(path, repr(path))
        files.append(h5)
        if "model_config" not in h5.attrs:
            for f in files:
                f.close()
            raise ModelFormatError(
                f"{path!r}: this HDF5 file has weights but no architecture (no 'model_config' "
                f"attribute): pass the architecture (config.json or model.to_json() output) as "
                f"`path` and this file as `weights=`")
        raw = h5.attrs["model_config"]
        if isinstance(raw, np.ndarray):
            raw = raw.tobytes()
        config = _parse_json(raw, f"{path!r} (model_config)", limits)
        if weights is None:
            if "model_weights" not in h5:
                raise ModelFormatError(f"{path!r}: a legacy HDF5 model without a 'model_weights' group")
            store = LegacyStore(h5["model_weights"], f"{path!r} (model_weights)")
    else:
        _check_size(path, limits["max_config_bytes"], "the architecture JSON")
        with open(path, "rb") as f:
            text = f.read()
        config = _parse_json(text, repr(path), limits)
        if weights is None:
            raise ModelFormatError(
                f"load_model: {path!r} holds only an architecture; pass its weights file as "
                f"`weights=` (a .weights.h5 from model.save_weights())")
    if weights is not None:
        store = _weights_file(weights, limits, files)
    return _Sources(config, store, files)


def _weights_file(weights, limits, files):
    wpath = _name(weights)
    if not isinstance(wpath, str):
        raise ModelFormatError(
            f"load_model: argument `weights` must be a path (str or os.PathLike) or None; "
            f"got {type(weights).__name__}")
    if not os.path.isfile(wpath):
        raise ModelFormatError(f"load_model: argument `weights`: no such file {wpath!r}")
    _check_size(wpath, limits["max_weight_bytes"], "the weights file")
    if not h5py.is_hdf5(wpath):
        raise ModelFormatError(
            f"load_model: argument `weights`: {wpath!r} is not an HDF5 file (expected a "
            f".weights.h5 written by model.save_weights())")
    h5 = _open_h5(wpath, repr(wpath))
    files.append(h5)
    if "layers" in h5 or "vars" in h5:
        return KerasStore(h5, repr(wpath))
    if "model_weights" in h5:
        return LegacyStore(h5["model_weights"], f"{wpath!r} (model_weights)")
    if "layer_names" in h5.attrs or any(k.startswith("layer_names") for k in h5.attrs):
        return LegacyStore(h5, repr(wpath))
    raise ModelFormatError(
        f"load_model: argument `weights`: {wpath!r} is HDF5 but neither a Keras 3 weights file "
        f"(no 'layers' group) nor a legacy one (no 'layer_names' attribute)")


def h5get(group, path, where):
    """``group[path]`` following hard links only, or None if absent.

    External links, soft links, external raw storage and virtual datasets
    could make a weights file read other files on this machine: refused."""
    node = group
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, h5py.Group) or part not in node:
            return None
        link = node.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ModelFormatError(
                f"{where}: {node.name}/{part} is a {type(link).__name__}; only plain HDF5 groups "
                f"and datasets are read from a model file")
        node = node[part]
    return node


def _read_dataset(ds, where, limits):
    if not isinstance(ds, h5py.Dataset):
        raise ModelFormatError(f"{where}: expected a dataset, found a group")
    if ds.is_virtual or ds.external:
        raise ModelFormatError(f"{where}: a virtual or externally stored dataset; only plain "
                               f"datasets are read from a model file")
    if ds.dtype.kind not in "fiub":
        raise ModelFormatError(f"{where}: expected numeric weights; got dtype {ds.dtype}")
    nbytes = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    if nbytes > limits["max_weight_bytes"]:
        raise ModelFormatError(f"{where}: {nbytes} bytes, over max_weight_bytes={limits['max_weight_bytes']}")
    return np.array(ds[()])


# ------------------------------------------------------------------ Keras 3 layout

class KerasStore:
    """Weights of a Keras 3 file (``saving_lib`` layout).

    A *context* is the h5 group of a model (the file root for the outermost
    one); ``container_layers(ctx, layers)`` maps each layer of that model to the
    group holding its ``vars``.
    """

    kind = "keras"
    keras_version = "3"

    def __init__(self, root, where):
        self.root = root
        self.where = where

    def top(self):
        return self.root

    def assign(self, ctx, entries):
        """``entries``: [(layer_name, class_name)] in the model's ``layers`` order.
        Returns {layer_name: h5 group or None}."""
        group = h5get(ctx, "layers", self.where) if ctx is not None else None
        found = {}
        by_attr = {}
        if group is not None:
            for key in group:
                vars_ = h5get(group, f"{key}/vars", self.where)
                if vars_ is not None and "name" in vars_.attrs:
                    n = vars_.attrs["name"]
                    by_attr[n.decode() if isinstance(n, bytes) else str(n)] = group[key]
        used = {}
        for layer_name, class_name in entries:
            base = snake_case(class_name)
            if base in used:
                used[base] += 1
                key = f"{base}_{used[base]}"
            else:
                used[base] = 0
                key = base
            g = h5get(group, key, self.where) if group is not None else None
            if by_attr and layer_name in by_attr:
                g = by_attr[layer_name]
            found[layer_name] = g
        return found

    def values(self, group, where, limits):
        """The arrays under ``group/vars`` in order (vars/0, vars/1, ...)."""
        vars_ = h5get(group, "vars", self.where) if group is not None else None
        if vars_ is None:
            return []
        keys = sorted((k for k in vars_ if k.isdigit()), key=int)
        if [int(k) for k in keys] != list(range(len(keys))):
            raise ModelFormatError(f"{self.where}: {vars_.name}: variables are not numbered 0..n-1: {keys}")
        return [_read_dataset(h5get(vars_, k, self.where), f"{self.where}: {vars_.name}/{k} ({where})", limits)
                for k in keys]


# ------------------------------------------------------------------ legacy layout

def _attr_list(group, name):
    """A (possibly chunked: name0, name1, ...) string-list attribute."""
    if name in group.attrs:
        raw = list(group.attrs[name])
    else:
        raw = []
        k = 0
        while f"{name}{k}" in group.attrs:
            raw.extend(group.attrs[f"{name}{k}"])
            k += 1
    return [r.decode("utf8") if isinstance(r, bytes) else str(r) for r in raw]


class LegacyStore:
    """Weights of a legacy HDF5 file: ``<group>/<layer name>`` with ``weight_names``.

    A top-level context is the group itself; a nested model's context is the
    list of ``(weight name, array)`` pairs saved for it as one layer.
    """

    kind = "legacy"

    def __init__(self, root, where):
        self.root = root
        self.where = where
        version = root.attrs.get("keras_version", root.file.attrs.get("keras_version", b""))
        if isinstance(version, bytes):
            version = version.decode("utf8", "replace")
        self.keras_version = str(version)

    def top(self):
        return self.root

    def layer_pairs(self, ctx, layer_name, limits):
        """[(weight name, array)] for a layer of the model whose context is ``ctx``."""
        if isinstance(ctx, list):  # inside a nested model: match by the layer-name path component
            return [(n, a) for n, a in ctx if _legacy_owner(n) == layer_name]
        g = h5get(ctx, layer_name, self.where)
        if g is None:
            return None
        names = _attr_list(g, "weight_names")
        out = []
        for n in names:
            ds = h5get(g, n, self.where)
            if ds is None:
                raise ModelFormatError(f"{self.where}: layer {layer_name!r} lists weight {n!r} but has no such dataset")
            out.append((n, _read_dataset(ds, f"{self.where}: {layer_name}/{n}", limits)))
        return out


def _legacy_owner(weight_name):
    parts = weight_name.split("/")
    return parts[-2] if len(parts) >= 2 else None


def legacy_var_name(weight_name):
    """``"block/conv2d/kernel:0"`` -> ``"kernel"``."""
    last = weight_name.split("/")[-1]
    return last.split(":")[0]
