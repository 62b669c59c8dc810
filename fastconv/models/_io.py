"""Reading Keras model files with json, zipfile and h5py only — treating them as hostile.

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

Security
--------
Threat model: a model file (and a weights file) may come from anyone and may
be crafted to run code, read other files on this machine, exhaust memory or
CPU, or crash the loader. The caller and the caller's code are trusted; the
file's bytes are not. ``load_model`` therefore promises:

1. **Nothing from a file is imported, evaluated or executed.** Layer classes
   map through a fixed table (:data:`~fastconv.models.layers.LAYERS`, ``keras.ops``
   calls through :data:`~fastconv.models.layers.OPS`); ``module``,
   ``class_name`` and ``registered_name`` are compared with that table and
   never imported. A built-in class name with a foreign ``module`` or
   ``registered_name`` is refused as custom. Custom layers exist only if the
   caller registers them in code (:func:`fastconv.models.register_layer`).
   ``Lambda``, ``TFOpLambda``, ``SlicingOpLambda``, ``TorchModuleWrapper``,
   ``JaxLayer``, ``FlaxLayer`` and ``TFSMLayer`` layers, and any serialized
   function anywhere in the configuration (Keras 3 ``__lambda__`` objects,
   Keras 2 ``function``/``function_type`` bytecode or names), are refused
   with :class:`UnsafeModelError`; activations are built-in names only;
   ``training_config`` (losses, metrics) is never parsed.
2. **Nothing outside the given files is read.** HDF5 external links, soft
   links, externally stored (raw external file) datasets and virtual
   datasets are refused before anything under them is resolved
   (:class:`UnsafeReferenceError`); groups are walked link by link, never
   through a path the library would resolve. Datasets with filters other than
   deflate, shuffle, Fletcher32 and LZF are refused, so no HDF5 filter plugin
   (a shared library) is ever loaded. A ``.keras`` archive is never extracted
   to disk; its members are read into memory by name.
3. **Bounded memory and time** (:class:`Limits`, all configurable): file size;
   architecture JSON size and nesting depth (checked by a linear scan before
   the parser sees it); zip member count, per-member and total decompressed
   size and compression ratio (read with a bounded reader, whatever the zip
   header claims); weight bytes and parameter count (counted from each
   dataset's declared shape before it is read); datasets that declare more data
   than the file stores, or compress better than ``max_compression_ratio``
   (shape and decompression bombs); HDF5 chunk sizes; attribute sizes; number
   of layers and depth of nested models; number of members walked in a group.
   Graph traversal is iterative and cycles are refused.
4. **Only fastconv errors come out**: every failure is a subclass of
   :class:`ModelFormatError` (or :class:`UnsupportedLayerError`), naming the file
   and the place in it: :class:`UnknownFormatError` (empty; not a zip, HDF5 or
   JSON file, e.g. a PNG called ``.keras``), :class:`CorruptModelError`
   (truncated or damaged), :class:`ArchiveError` (missing, unexpected,
   duplicated or path-like members such as ``../x`` or ``/etc/passwd``,
   encryption, unusual compression), :class:`LimitExceededError`,
   :class:`WeightMismatchError` (weights whose count, shape or dtype do not fit
   the layer's configuration), :class:`UnsafeModelError` and
   :class:`UnsafeReferenceError`. Errors raised by h5py, zipfile, zlib or json
   on a damaged file are wrapped in :class:`CorruptModelError`.

Not covered: the caller's own choice of path (symbolic links in the path the
caller passes are followed, as for any file the caller opens); denial of
service below the limits (a model within the limits may still be slow to
run); bugs in the HDF5 C library itself when parsing a hostile file's
metadata (keep h5py/HDF5 up to date, or run untrusted loads in a separate
process).
"""

import dataclasses
import io
import json
import os
import re
import stat
import zipfile

import h5py
import numpy as np

from ..errors import FastconvError, InvalidArgumentError
from .errors import (ArchiveError, CorruptModelError, LimitExceededError, ModelFormatError,
                     UnknownFormatError, UnsafeReferenceError, WeightMismatchError)

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits on what an (untrusted) model file may ask :func:`fastconv.load_model` for.

    Every field is an integer; pass a :class:`Limits` as ``load_model(path,
    limits=Limits(max_params=10**9))``. The defaults admit every Keras
    Application (VGG16's 138 M parameters, configs under 1 MB, JSON depth under
    20) with room to spare while keeping the worst case of a hostile file to a
    few GiB.

    Attributes
    ----------
    max_file_bytes : int
        Size of each file given (the model file, the weights file). 8 GiB.
    max_config_bytes : int
        Size of the architecture JSON (``config.json``, ``model_config``). 16 MiB.
    max_json_depth : int
        Nesting depth of the architecture JSON (objects and arrays). 256.
    max_weight_bytes : int
        Bytes of all weight arrays together, as declared by their shapes
        (also the bound for one array). 4 GiB.
    max_params : int
        Number of weight values, all arrays together. 1 G.
    max_layers : int
        Layers in the model, nested models' layers included. 100 000.
    max_nesting : int
        Depth of models nested in models (0: no nested model). 32.
    max_archive_members : int
        Members of a ``.keras`` zip archive. 64.
    max_archive_bytes : int
        Decompressed size of all members of a ``.keras`` archive together. 8 GiB.
    max_compression_ratio : int
        Decompressed / compressed size of a zip member or an HDF5 dataset
        (members and datasets under 1 MiB are exempt). 1000.
    max_group_members : int
        Members of any one HDF5 group that fastconv walks. 1 000 000.
    """

    max_file_bytes: int = 8 << 30
    max_config_bytes: int = 16 << 20
    max_json_depth: int = 256
    max_weight_bytes: int = 4 << 30
    max_params: int = 1 << 30
    max_layers: int = 100_000
    max_nesting: int = 32
    max_archive_members: int = 64
    max_archive_bytes: int = 8 << 30
    max_compression_ratio: int = 1000
    max_group_members: int = 1_000_000

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            low = 0 if f.name == "max_nesting" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidArgumentError(
                    f"Limits: argument `{f.name}` must be an integer >= {low}; got {v!r}")

    def as_dict(self):
        return dataclasses.asdict(self)


DEFAULTS = Limits().as_dict()


def _lim(limits, key):
    """A limit from a dict that may predate some keys."""
    return limits.get(key, DEFAULTS[key]) if isinstance(limits, dict) else getattr(limits, key)


def _over(what, actual, key, limits, where):
    value = _lim(limits, key)
    return LimitExceededError(f"{where}: {what} is {actual}, over the limit {key}={value}",
                              limit=key, value=value, actual=actual)


def _name(path):
    return os.fspath(path) if isinstance(path, os.PathLike) else path


def snake_case(class_name):
    """Keras's object-path naming of a class (``"Conv2DTranspose"`` -> ``"conv2d_transpose"``,
    ``"PReLU"`` -> ``"p_re_lu"``)."""
    s = re.sub(r"\W+", "", class_name)
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", s)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


# ---------------------------------------------------------------------- JSON

_JSON_ESCAPE = re.compile(rb"\\.", re.S)
_JSON_STRING = re.compile(rb'"[^"]*"')


def json_depth(data):
    """Maximum nesting of ``[``/``{`` in JSON text (brackets inside strings skipped), in
    linear time and without recursion: escapes (``\\x``) are removed left to right, then
    strings, then the brackets are counted."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    stripped = _JSON_STRING.sub(b"", _JSON_ESCAPE.sub(b"", data))
    b = np.frombuffer(stripped, np.uint8)
    step = ((b == 91) | (b == 123)).astype(np.int8) - ((b == 93) | (b == 125)).astype(np.int8)
    return int(np.cumsum(step, dtype=np.int32).max()) if step.size else 0


def _parse_json(text, where, limits):
    if len(text) > _lim(limits, "max_config_bytes"):
        raise _over("the architecture JSON", f"{len(text)} bytes", "max_config_bytes", limits, where)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptModelError(f"{where}: the architecture is not UTF-8 text: {exc}") from None
    depth = json_depth(text)
    if depth > _lim(limits, "max_json_depth"):
        raise _over("the nesting depth of the architecture JSON", depth, "max_json_depth", limits, where)
    try:
        cfg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptModelError(f"{where}: the architecture is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or "class_name" not in cfg or "config" not in cfg:
        raise ModelFormatError(
            f"{where}: expected a serialized Keras model (a JSON object with 'class_name' and "
            f"'config'); got {type(cfg).__name__}"
            + (f" with keys {sorted(map(str, cfg))[:8]}" if isinstance(cfg, dict) else ""))
    return cfg


# ---------------------------------------------------------------------- files

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_KNOWN_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip file"), (b"\x7fELF", "an ELF executable"),
                (b"\x80", "a Python pickle"), (b"\x93NUMPY", "a NumPy .npy file"),
                (b"BZh", "a bzip2 file"), (b"\xfd7zXZ", "an xz file"), (b"\x08", "a protobuf (SavedModel?)"))


def _check_size(path, limit, what):
    size = os.path.getsize(path)
    if size > limit:
        raise LimitExceededError(f"{path!r}: {what} is {size} bytes, over the limit {limit}",
                                 actual=size, value=limit)


def _sniff(path, arg, limits):
    """The kind of a file ('zip', 'hdf5', 'json'), after checking it is a regular file of sane size."""
    try:
        st = os.stat(path)
    except OSError:
        raise ModelFormatError(f"load_model: argument `{arg}`: no such file {path!r}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelFormatError(
            f"load_model: {path!r} is a directory (a TensorFlow SavedModel?); expected a .keras "
            f"archive, a legacy .h5 model, or an architecture JSON with weights=")
    if not stat.S_ISREG(st.st_mode):
        raise ModelFormatError(f"load_model: argument `{arg}`: {path!r} is not a regular file "
                               f"(a device, FIFO or socket is never read)")
    if st.st_size == 0:
        raise UnknownFormatError(f"load_model: argument `{arg}`: {path!r} is an empty file")
    if st.st_size > _lim(limits, "max_file_bytes"):
        raise _over("the file", f"{st.st_size} bytes", "max_file_bytes", limits, repr(path))
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelFormatError(f"load_model: argument `{arg}`: cannot read {path!r}: {exc}") from None
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"[", b'"') or (not text and st.st_size > len(head)):
        return "json"
    if st.st_size >= 1024:
        try:  # HDF5 with a user block: the signature sits at 512, 1024, 2048, ...
            if h5py.is_hdf5(path):
                return "hdf5"
        except Exception:  # noqa: BLE001 - whatever the library thinks, it is not ours
            pass
    what = next((desc for magic, desc in _KNOWN_MAGIC if head.startswith(magic)), None)
    raise UnknownFormatError(
        f"load_model: argument `{arg}`: {path!r} is not a Keras model file: not a zip archive, not HDF5 "
        f"and not valid JSON" + (f" (it looks like {what})" if what else f" (it starts with {head[:8]!r})")
        + "; expected a .keras zip archive, an HDF5 .h5 file or an architecture JSON")


def _open_h5(source, where):
    try:
        return h5py.File(source, "r")
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, RuntimeError from a damaged file
        raise CorruptModelError(f"{where}: not a readable HDF5 file: {type(exc).__name__}: {exc}") from None


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
    kind = _sniff(path, "path", limits)
    files = []
    try:
        if kind == "zip":
            config, h5 = _read_archive(path, weights is None, limits)
            store = None
            if h5 is not None:
                files.append(h5)
                store = KerasStore(h5, f"{path!r} (model.weights.h5)", limits)
        elif kind == "hdf5":
            h5 = _open_h5(path, repr(path))
            files.append(h5)
            config, store = _read_legacy_model(h5, path, weights is None, limits)
        else:
            with open(path, "rb") as f:
                text = f.read(_lim(limits, "max_config_bytes") + 1)
            config = _parse_json(text, repr(path), limits)
            if weights is None:
                raise ModelFormatError(
                    f"load_model: {path!r} holds only an architecture; pass its weights file as "
                    f"`weights=` (a .weights.h5 from model.save_weights())")
            store = None
        if weights is not None:
            store = _weights_file(weights, limits, files)
    except BaseException:
        for f in files:
            _close(f)
        raise
    return _Sources(config, store, files)


def _close(f):
    try:
        f.close()
    except Exception:  # noqa: BLE001
        pass


def wrap_errors(where, cls=CorruptModelError,
                what="could not be read (damaged, truncated or not a Keras model)"):
    """A context manager turning any non-fastconv exception (from h5py, zipfile, zlib, json,
    or a configuration value of the wrong type) into ``cls``, chained to the original."""
    return _Wrap(where, cls, what)


class _Wrap:
    def __init__(self, where, cls, what):
        self.where = where
        self.cls = cls
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None or isinstance(exc, (FastconvError, KeyboardInterrupt, SystemExit, GeneratorExit,
                                           MemoryError)):
            return False
        if isinstance(exc, Exception):
            raise self.cls(f"{self.where} {self.what}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        return False


# ---------------------------------------------------------------------- .keras archives

_ARCHIVE_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")
_SAFE_MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*/?")


def _check_member_name(name, where):
    bad = (not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name
           or re.match(r"^[A-Za-z]:", name) is not None
           or any(p in ("..", ".") for p in name.split("/")))
    if bad or not _SAFE_MEMBER.fullmatch(name):
        raise ArchiveError(f"{where}: the archive has a member with a path-like or unsafe name {name!r} "
                           f"(absolute, '..', backslashes or control characters); refused")


def _read_archive(path, want_weights, limits):
    """(config dict, h5py File of model.weights.h5 or None) from a .keras archive."""
    where = repr(path)
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, ValueError, EOFError...
        raise CorruptModelError(f"{where}: a damaged .keras archive: {type(exc).__name__}: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > _lim(limits, "max_archive_members"):
            raise _over("the number of archive members", len(infos), "max_archive_members", limits, where)
        seen = {}
        total = 0
        for info in infos:
            _check_member_name(info.filename, where)
            if info.filename in seen:
                raise ArchiveError(f"{where}: the archive holds {info.filename!r} twice; refused (ambiguous)")
            seen[info.filename] = info
            top = info.filename.split("/")[0]
            if info.filename not in _ARCHIVE_MEMBERS and top != "assets":
                raise ArchiveError(
                    f"{where}: unexpected member {info.filename!r} in a .keras archive (expected "
                    f"{', '.join(_ARCHIVE_MEMBERS)}; sharded or .npz weights are not supported)")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{where}: member {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ArchiveError(f"{where}: member {info.filename!r} uses compression method "
                                   f"{info.compress_type}; only stored and deflated members are read")
            total += info.file_size
            if info.file_size > MiB and info.file_size > _lim(limits, "max_compression_ratio") * max(
                    info.compress_size, 1):
                raise _over(f"the compression ratio of member {info.filename!r}",
                            f"{info.file_size / max(info.compress_size, 1):.0f}", "max_compression_ratio",
                            limits, where)
        if total > _lim(limits, "max_archive_bytes"):
            raise _over("the decompressed size of the archive", f"{total} bytes", "max_archive_bytes",
                        limits, where)
        if "config.json" not in seen:
            raise ArchiveError(
                f"{where}: a zip file without config.json is not a Keras .keras archive "
                f"(it holds {sorted(seen)[:6]})")
        raw = _read_member(zf, seen["config.json"], _lim(limits, "max_config_bytes"), "max_config_bytes",
                           limits, where)
        config = _parse_json(raw, f"{where} (config.json)", limits)
        if not want_weights:
            return config, None
        if "model.weights.h5" not in seen:
            raise ArchiveError(
                f"{where}: the archive has no model.weights.h5 (sharded or npz weights are "
                f"not supported); pass the weights file as weights=")
        data = _read_member(zf, seen["model.weights.h5"], _lim(limits, "max_file_bytes"), "max_file_bytes",
                            limits, where)
    if not data.startswith(_HDF5_MAGIC):
        raise CorruptModelError(f"{where}: model.weights.h5 in the archive is not an HDF5 file")
    return config, _open_h5(io.BytesIO(data), f"{where} (model.weights.h5)")


def _read_member(zf, info, limit, key, limits, where):
    """A member's bytes, reading at most ``limit`` + 1 bytes whatever its header says."""
    if info.file_size > limit:
        raise _over(f"member {info.filename!r}", f"{info.file_size} bytes", key, limits, where)
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
            if len(data) > limit:
                raise _over(f"member {info.filename!r}", f"more than {limit} bytes", key, limits, where)
            if len(data) < info.file_size:
                raise CorruptModelError(f"{where}: member {info.filename!r} is truncated")
    except FastconvError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile (CRC), zlib.error, EOFError, OSError...
        raise CorruptModelError(
            f"{where}: member {info.filename!r} cannot be read (damaged archive): "
            f"{type(exc).__name__}: {exc}") from None
    return data


# ---------------------------------------------------------------------- HDF5 access

def h5link(group, name, where):
    """The link class of ``group/name`` (one component), or None if there is no such link;
    never resolves the link."""
    if "/" in name or name in ("", ".", ".."):
        return None
    try:
        key = name.encode("utf-8")
        if not group.id.links.exists(key):
            return None
        info = group.id.links.get_info(key)
    except Exception as exc:  # noqa: BLE001
        raise CorruptModelError(f"{where}: cannot read link {group.name}/{name}: {exc}") from None
    if info.type == h5py.h5l.TYPE_HARD:
        return "hard"
    kind = {h5py.h5l.TYPE_SOFT: "soft link (SoftLink)",
            h5py.h5l.TYPE_EXTERNAL: "external link (ExternalLink)"}.get(info.type, "user-defined link")
    raise UnsafeReferenceError(
        f"{where}: {group.name.rstrip('/')}/{name} is an HDF5 {kind}; links can make a model file read "
        f"other files or other parts of itself, and only plain groups and datasets are read")


def h5get(group, path, where):
    """``group[path]`` following hard links only, or None if absent.

    External links, soft links, external raw storage and virtual datasets
    could make a weights file read other files on this machine: refused
    (:class:`UnsafeReferenceError`) before the library resolves them."""
    node = group
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        if h5link(node, part, where) is None:
            return None
        node = node[part]
    return node


def h5keys(group, where, limits):
    """The member names of a group (links are not resolved), bounded by ``max_group_members``."""
    n = group.id.get_num_objs()
    if n > _lim(limits, "max_group_members"):
        raise _over(f"the number of members of HDF5 group {group.name}", n, "max_group_members", limits, where)
    return [group.id.get_objname_by_idx(i).decode("utf-8", "replace") for i in range(n)]


def read_attr(obj, name, where, limit):
    """Attribute ``name`` of an HDF5 object, or None; refuses attributes over ``limit`` bytes."""
    try:
        if name not in obj.attrs:
            return None
        aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
        nbytes = max(int(aid.get_storage_size()),
                     int(np.prod(aid.shape, dtype=np.int64)) * aid.dtype.itemsize)
    except FastconvError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CorruptModelError(f"{where}: cannot read attribute {name!r}: {type(exc).__name__}: {exc}") from None
    if nbytes > limit:
        raise LimitExceededError(f"{where}: attribute {name!r} is {nbytes} bytes, over the limit {limit}",
                                 value=limit, actual=nbytes)
    with wrap_errors(f"{where}: attribute {name!r}"):
        return obj.attrs[name]


# filters built into HDF5/h5py; any other id would make the library look for a plugin
_SAFE_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}


class _Budget:
    """Running totals of weight bytes and values read from one load."""

    def __init__(self, limits):
        self.limits = limits
        self.bytes = 0
        self.params = 0

    def take(self, nbytes, nvalues, where):
        self.bytes += nbytes
        self.params += nvalues
        if self.bytes > _lim(self.limits, "max_weight_bytes"):
            raise _over("the weights read so far", f"{self.bytes} bytes", "max_weight_bytes", self.limits, where)
        if self.params > _lim(self.limits, "max_params"):
            raise _over("the number of parameters read so far", self.params, "max_params", self.limits, where)


def _read_dataset(ds, where, limits, budget=None):
    if not isinstance(ds, h5py.Dataset):
        raise ModelFormatError(f"{where}: expected a dataset, found a group")
    with wrap_errors(where):
        dcpl = ds.id.get_create_plist()
        if dcpl.get_layout() == h5py.h5d.VIRTUAL or ds.is_virtual:
            raise UnsafeReferenceError(f"{where}: a virtual dataset (its data lives in other files); "
                                       f"only plain datasets are read from a model file")
        if dcpl.get_external_count() > 0:
            raise UnsafeReferenceError(f"{where}: a dataset stored in an external raw file; only data "
                                       f"inside the model file is read")
        for i in range(dcpl.get_nfilters()):
            code = dcpl.get_filter(i)[0]
            if code not in _SAFE_FILTERS:
                raise UnsafeReferenceError(
                    f"{where}: the dataset uses HDF5 filter {code}, which would load a filter plugin; "
                    f"only {', '.join(_SAFE_FILTERS.values())} are read")
        dtype = ds.dtype
        if dtype.kind not in "fiub" or dtype.itemsize > 8:
            raise WeightMismatchError(f"{where}: expected numeric weights; got dtype {dtype}")
        shape = ds.shape
        if shape is None:
            raise ModelFormatError(f"{where}: a dataset without a shape (null dataspace)")
        nvalues = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or nvalues < 0 or nvalues > (1 << 62) // max(dtype.itemsize, 1):
            raise CorruptModelError(f"{where}: impossible shape {shape}")
        nbytes = nvalues * dtype.itemsize
        if nbytes > _lim(limits, "max_weight_bytes"):
            raise _over("the array", f"{nbytes} bytes", "max_weight_bytes", limits, where)
        if nvalues > _lim(limits, "max_params"):
            raise _over("the array", f"{nvalues} values", "max_params", limits, where)
        if ds.chunks is not None:
            chunk = int(np.prod(ds.chunks, dtype=np.int64)) * dtype.itemsize
            if chunk > max(nbytes, MiB):
                raise _over("an HDF5 chunk", f"{chunk} bytes for a {nbytes}-byte array", "max_weight_bytes",
                            limits, where)
        stored = int(ds.id.get_storage_size())
        if nbytes > 0 and dcpl.get_nfilters() == 0 and dcpl.get_layout() != h5py.h5d.COMPACT \
                and stored < nbytes:
            raise CorruptModelError(
                f"{where}: the dataset declares {nbytes} bytes of shape {shape} but the file stores "
                f"{stored}; refused (a shape bomb, or a truncated file)")
        if nbytes > MiB and nbytes > _lim(limits, "max_compression_ratio") * max(stored, 1):
            raise _over("the dataset's compression ratio", f"{nbytes / max(stored, 1):.0f} "
                        f"({nbytes} bytes from {stored})", "max_compression_ratio", limits, where)
        if budget is not None:
            budget.take(nbytes, nvalues, where)
        arr = np.empty(shape, dtype=dtype)
        if nvalues:
            ds.read_direct(arr)
        return arr


# ------------------------------------------------------------------ Keras 3 layout

class KerasStore:
    """Weights of a Keras 3 file (``saving_lib`` layout).

    A *context* is the h5 group of a model (the file root for the outermost
    one); ``container_layers(ctx, layers)`` maps each layer of that model to the
    group holding its ``vars``.
    """

    kind = "keras"
    keras_version = "3"

    def __init__(self, root, where, limits=None):
        self.root = root
        self.where = where
        self.limits = limits if limits is not None else DEFAULTS
        self.budget = _Budget(self.limits)

    def top(self):
        return self.root

    def assign(self, ctx, entries):
        """``entries``: [(layer_name, class_name)] in the model's ``layers`` order.
        Returns {layer_name: h5 group or None}."""
        with wrap_errors(self.where):
            group = h5get(ctx, "layers", self.where) if ctx is not None else None
            if group is not None and not isinstance(group, h5py.Group):
                raise ModelFormatError(f"{self.where}: {group.name} is not a group")
            found = {}
            by_attr = {}
            if group is not None:
                for key in h5keys(group, self.where, self.limits):
                    vars_ = h5get(group, f"{key}/vars", self.where)
                    if isinstance(vars_, h5py.Group):
                        n = read_attr(vars_, "name", self.where, 4096)
                        if n is not None:
                            by_attr[n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)] = group[key]
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
        with wrap_errors(self.where):
            vars_ = h5get(group, "vars", self.where) if isinstance(group, h5py.Group) else None
            if not isinstance(vars_, h5py.Group):
                return []
            keys = sorted((k for k in h5keys(vars_, self.where, limits) if k.isdigit() and len(k) < 10), key=int)
            if [int(k) for k in keys] != list(range(len(keys))):
                raise ModelFormatError(f"{self.where}: {vars_.name}: variables are not numbered 0..n-1: {keys[:20]}")
            return [_read_dataset(h5get(vars_, k, self.where), f"{self.where}: {vars_.name}/{k} ({where})",
                                  limits, self.budget)
                    for k in keys]


# ------------------------------------------------------------------ legacy layout

def _attr_list(group, name, where="", limit=16 * MiB):
    """A (possibly chunked: name0, name1, ...) string-list attribute."""
    raw = read_attr(group, name, where, limit)
    if raw is None:
        raw = []
        k = 0
        while True:
            part = read_attr(group, f"{name}{k}", where, limit)
            if part is None:
                break
            raw.extend(np.atleast_1d(part))
            k += 1
    return [r.decode("utf8", "replace") if isinstance(r, bytes) else str(r) for r in np.atleast_1d(raw)]


def _attr_text(raw):
    if isinstance(raw, np.ndarray):
        raw = raw.tobytes() if raw.dtype.kind == "S" else (raw.item() if raw.size == 1 else raw.tobytes())
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return str(raw)


def _read_legacy_model(h5, path, want_weights, limits):
    where = repr(path)
    with wrap_errors(where):
        raw = read_attr(h5, "model_config", where, _lim(limits, "max_config_bytes"))
        if raw is None:
            raise ModelFormatError(
                f"{where}: this HDF5 file has weights but no architecture (no 'model_config' "
                f"attribute): pass the architecture (config.json or model.to_json() output) as "
                f"`path` and this file as `weights=`")
        if isinstance(raw, np.ndarray):
            raw = raw.tobytes()
        config = _parse_json(raw, f"{where} (model_config)", limits)
        store = None
        if want_weights:
            mw = h5get(h5, "model_weights", where)
            if not isinstance(mw, h5py.Group):
                raise ModelFormatError(f"{where}: a legacy HDF5 model without a 'model_weights' group")
            store = LegacyStore(mw, f"{where} (model_weights)", limits)
        return config, store


def _weights_file(weights, limits, files):
    wpath = _name(weights)
    if not isinstance(wpath, str):
        raise ModelFormatError(
            f"load_model: argument `weights` must be a path (str or os.PathLike) or None; "
            f"got {type(weights).__name__}")
    kind = _sniff(wpath, "weights", limits)
    if kind != "hdf5":
        raise UnknownFormatError(
            f"load_model: argument `weights`: {wpath!r} is not an HDF5 file (expected a "
            f".weights.h5 written by model.save_weights())")
    h5 = _open_h5(wpath, repr(wpath))
    files.append(h5)
    where = repr(wpath)
    with wrap_errors(where):
        top = h5keys(h5, where, limits)
        if "layers" in top or "vars" in top:
            for k in ("layers", "vars"):
                if k in top:
                    h5link(h5, k, where)
            return KerasStore(h5, where, limits)
        if "model_weights" in top:
            mw = h5get(h5, "model_weights", where)
            if isinstance(mw, h5py.Group):
                return LegacyStore(mw, f"{where} (model_weights)", limits)
        if "layer_names" in h5.attrs or any(k.startswith("layer_names") for k in h5.attrs):
            return LegacyStore(h5, where, limits)
    raise ModelFormatError(
        f"load_model: argument `weights`: {wpath!r} is HDF5 but neither a Keras 3 weights file "
        f"(no 'layers' group) nor a legacy one (no 'layer_names' attribute)")


class LegacyStore:
    """Weights of a legacy HDF5 file: ``<group>/<layer name>`` with ``weight_names``.

    A top-level context is the group itself; a nested model's context is the
    list of ``(weight name, array)`` pairs saved for it as one layer.
    """

    kind = "legacy"

    def __init__(self, root, where, limits=None):
        self.root = root
        self.where = where
        self.limits = limits if limits is not None else DEFAULTS
        self.budget = _Budget(self.limits)
        with wrap_errors(where):
            version = read_attr(root, "keras_version", where, 4096)
            if version is None:
                version = read_attr(root.file, "keras_version", where, 4096)
        self.keras_version = _attr_text(version) if version is not None else ""

    def top(self):
        return self.root

    def layer_pairs(self, ctx, layer_name, limits):
        """[(weight name, array)] for a layer of the model whose context is ``ctx``."""
        if isinstance(ctx, list):  # inside a nested model: match by the layer-name path component
            return [(n, a) for n, a in ctx if _legacy_owner(n) == layer_name]
        with wrap_errors(self.where):
            g = h5get(ctx, layer_name, self.where)
            if g is None:
                return None
            if not isinstance(g, h5py.Group):
                raise ModelFormatError(f"{self.where}: {g.name} is not a group")
            names = _attr_list(g, "weight_names", self.where, _lim(limits, "max_config_bytes"))
            out = []
            for n in names:
                ds = h5get(g, n, self.where)
                if ds is None:
                    raise ModelFormatError(
                        f"{self.where}: layer {layer_name!r} lists weight {n!r} but has no such dataset")
                out.append((n, _read_dataset(ds, f"{self.where}: {layer_name}/{n}", limits, self.budget)))
            return out


def _legacy_owner(weight_name):
    parts = weight_name.split("/")
    return parts[-2] if len(parts) >= 2 else None


def legacy_var_name(weight_name):
    """``"block/conv2d/kernel:0"`` -> ``"kernel"``."""
    last = weight_name.split("/")[-1]
    return last.split(":")[0]
