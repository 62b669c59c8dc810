"""The ``fastconv`` command (also ``python -m fastconv``).

Subcommands::

    fastconv demo                      run the shipped digit classifier; compare with Keras
    fastconv summary MODEL             layers, output shapes, parameters and MACs
    fastconv predict MODEL INPUT       run a model on .npy/.npz arrays, an image or a folder of images
    fastconv profile MODEL             time and GFLOP/s per layer
    fastconv bench                     the backends on a few canonical ops, median ms
    fastconv features MODEL INPUT      draw a layer's feature maps (needs matplotlib)

``MODEL`` is a ``.keras``, ``.h5`` or architecture ``.json`` file (with
``--weights``), or the word ``demo`` for the classifier shipped with fastconv.

A user error (a missing or unreadable file, an unsupported model, input of
the wrong shape, an unknown backend, a bad image, a missing optional
dependency) prints one line to stderr and exits with status 1 (2 for a
command-line usage error); any other exception prints one line naming its
class and exits 1, or shows the traceback with ``--debug``.

Optional dependencies: ``pip install "fastconv[cli]"`` (tqdm for progress
bars, Pillow to read images) and ``"fastconv[viz]"`` (matplotlib, for
``features``). Without tqdm there is no progress bar; without Pillow image
input fails with a one-line message.
"""

import argparse
import fractions
import math
import os
import statistics
import sys
import time
import zipfile

import numpy as np

from .errors import FastconvError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 1."""


# ---------------------------------------------------------------------- helpers

class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _progress(iterable, args, total=None, desc=None, unit="it"):
    """``iterable`` wrapped in a tqdm progress bar (on stderr), or as it is: with ``--quiet``,
    when stdout or stderr is not a terminal, or when tqdm is not installed."""
    if getattr(args, "quiet", False) or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)


def _need_pillow():
    try:
        from PIL import Image
    except ImportError:
        from .viz import MissingDependencyError
        raise MissingDependencyError(
            "reading images needs Pillow, which is not installed; install it with "
            "pip install \"fastconv[cli]\" (or pip install Pillow), or pass a .npy/.npz array") from None
    return Image


def _scale(text):
    try:
        value = float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 1/255; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _check_backend(name, allow_auto=True):
    from . import backends
    if allow_auto and name == "auto":
        return name
    available = backends.available_backends()
    choices = (["auto"] if allow_auto else []) + available
    if name not in backends.KNOWN:
        raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(choices)}")
    if name not in available:
        raise UserError(f"backend {name!r} is not available on this machine; choose one of: {', '.join(choices)}")
    return name


def _model_path(spec):
    """The file of MODEL: ``demo`` (unless a file of that name exists) means the shipped classifier."""
    if spec == "demo" and not os.path.exists(spec):
        from .data import DEMO_MODEL
        return DEMO_MODEL
    if not os.path.exists(spec):
        raise UserError(f"model file {spec!r} does not exist")
    if os.path.isdir(spec):
        raise UserError(f"model {spec!r} is a folder; give a .keras, .h5 or .json file")
    return spec


def _load_model(args):
    from . import load_model
    weights = getattr(args, "weights", None)
    if weights is not None and not os.path.isfile(weights):
        raise UserError(f"weights file {weights!r} does not exist")
    return load_model(_model_path(args.model), weights=weights)


def _fmt_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _image_layout(model):
    """(data format, height, width, channels) of an image model's single input."""
    if len(model.input_shapes) != 1:
        raise UserError(f"the model has {len(model.input_shapes)} inputs {model.input_names}; images can feed "
                        f"only a single-input model (use a .npz with one array per input name)")
    shape = model.input_shapes[0]
    if shape is None or len(shape) != 4:
        raise UserError(f"the model's input has shape {_fmt_shape(shape) if shape else '(unknown)'}; images can "
                        f"feed only a model whose input is (batch, height, width, channels)")
    _, a, b, c = shape
    if c in (1, 3):
        return "channels_last", a, b, c
    if a in (1, 3):
        return "channels_first", b, c, a
    raise UserError(f"the model's input has shape {_fmt_shape(shape)}: images have 1 (L) or 3 (RGB) channels")


def _read_images(files, model, args):
    """Decode ``files`` with Pillow into a float32 batch the model takes (values 0..255)."""
    _need_pillow()
    return _decode_images(_progress(files, args, desc="reading images", unit="image"), _image_layout(model))


def _decode_images(files, layout):
    Image = _need_pillow()
    fmt, height, width, channels = layout
    mode = "L" if channels == 1 else "RGB"
    bomb = getattr(Image, "DecompressionBombError", OSError)
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                h = height if height is not None else im.size[1]
                w = width if width is not None else im.size[0]
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except (OSError, ValueError, bomb) as exc:
            raise UserError(f"cannot read image {f!r}: {exc}") from None
        arrays.append(a[..., None] if a.ndim == 2 else a)
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise UserError(f"the model takes any image size, but the images differ in size ({sorted(sizes)[:3]} ...); "
                        f"resize them to one size")
    x = np.stack(arrays)
    return np.moveaxis(x, -1, 1) if fmt == "channels_first" else x


class _ImageSource:
    """A folder's images as a :func:`fastconv.dask.predict_stream` source: decoded chunk by chunk."""

    def __init__(self, files, layout, scale):
        self.files, self.layout, self.scale = files, layout, scale
        first = _decode_images(files[:1], layout)
        self.shape, self.dtype = (len(files),) + first.shape[1:], np.dtype(np.float32)

    def __len__(self):
        return len(self.files)

    def read(self, start, stop):
        x = _decode_images(self.files[start:stop], self.layout)
        if x.shape[1:] != self.shape[1:]:
            raise UserError(f"the images differ in size: {self.files[start]!r} is {x.shape[1:]}, "
                            f"{self.files[0]!r} is {self.shape[1:]}; resize them to one size")
        return x * np.float32(self.scale) if self.scale is not None else x


def _image_files(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
                   and os.path.isfile(os.path.join(path, f)))
    if not files:
        raise UserError(f"folder {path!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _load_array_file(path, key, model):
    """Model input from a .npy or .npz file: an array, or a dict {input name: array}."""
    try:
        if path.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if key is not None:
                if key not in keys:
                    raise UserError(f"{path!r} has no array {key!r}; it has: {', '.join(keys) or 'none'}")
                return data[key]
            names = model.input_names
            if len(names) > 1 and set(names) <= set(keys):
                return {n: data[n] for n in names}
            if len(names) == 1 and names[0] in keys:
                return data[names[0]]
            if len(keys) == 1:
                return data[keys[0]]
            if "x" in keys:
                return data["x"]
            raise UserError(f"{path!r} holds several arrays ({', '.join(keys[:10])}); choose one with --key "
                            f"(or name them after the model's inputs: {', '.join(names)})")
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path!r} as a NumPy file: {exc}") from None


def _read_input(path, model, args):
    """(x, row names) for INPUT: .npy, .npz, an image file or a folder of images."""
    if not os.path.exists(path):
        raise UserError(f"input {path!r} does not exist")
    if os.path.isdir(path):
        files = _image_files(path)
        x, names = _read_images(files, model, args), [os.path.basename(f) for f in files]
    elif path.lower().endswith((".npy", ".npz")):
        x = _load_array_file(path, getattr(args, "key", None), model)
        first = next(iter(x.values())) if isinstance(x, dict) else x
        if first.ndim == 0:
            raise UserError(f"{path!r} holds a scalar, not a batch of samples")
        names = [f"[{i}]" for i in range(first.shape[0])]
    elif path.lower().endswith(IMAGE_EXTENSIONS):
        x, names = _read_images([path], model, args), [os.path.basename(path)]
    else:
        raise UserError(f"input {path!r}: expected a .npy or .npz file, an image ({', '.join(IMAGE_EXTENSIONS)}) "
                        f"or a folder of images")
    scale = getattr(args, "scale", None)
    if scale is not None:
        def scaled(a):
            if a.dtype.kind not in "biuf":
                raise UserError(f"input {path!r}: an array of dtype {a.dtype} cannot be scaled")
            return a.astype(np.float32) * np.float32(scale)
        x = {k: scaled(v) for k, v in x.items()} if isinstance(x, dict) else scaled(x)
    return x, names


def _rows(x, start, stop):
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def _concat(parts):
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [np.concatenate([p[i] for p in parts]) for i in range(len(first))]
    return np.concatenate(parts)


def _predict(model, x, args, batch_size, backend):
    """``model.predict`` in batches, with a progress bar over the batches."""
    first = next(iter(x.values())) if isinstance(x, dict) else x
    n = first.shape[0] if getattr(first, "ndim", 0) else 0
    if n <= batch_size:
        return model.predict(x, batch_size=batch_size, backend=backend)
    starts = range(0, n, batch_size)
    parts = [model.predict(_rows(x, s, s + batch_size), batch_size=batch_size, backend=backend)
             for s in _progress(starts, args, total=len(starts), desc="predict", unit="batch")]
    return _concat(parts)


def _nbytes(n):
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# ---------------------------------------------------------------------- demo

def cmd_demo(args):
    from . import __version__, available_backends
    from . import data

    if args.save_images is not None:
        return _save_demo_images(args)
    names = [_check_backend(b) for b in args.backend] if args.backend else available_backends()
    model = data.demo_model()
    x, labels, keras_probs = data.demo_heldout()
    n = len(labels)
    keras_acc = float(np.mean(keras_probs.argmax(axis=1) == labels))
    params = model.count_params() if hasattr(model, "count_params") else None
    macs = None
    if hasattr(model, "cost"):
        macs = model.cost().total.macs
    print(f"fastconv {__version__} demo: a Keras CNN digit classifier, run without TensorFlow")
    print(f"model  {data.DEMO_MODEL} ({_nbytes(os.path.getsize(data.DEMO_MODEL))})")
    details = [f"{len(model.layers)} layers"]
    if params is not None:
        details.append(f"{params:,} parameters")
    if macs is not None:
        details.append(f"{macs / 1e6:.1f} M MACs per image")
    print("       the seeds' sign-MNIST CNN (3 x Conv2D+BatchNorm+MaxPool, Dense 512) with 10 classes; "
          + ", ".join(details))
    print("       trained with Keras on scikit-learn's 8x8 digits scaled to 28x28 (tests/fixtures/train_demo_model.py)")
    print(f"data   {n} held-out digits never seen in training, 28x28x1 grey, input = pixels / 255")
    print()
    head = ("backend", "accuracy", "argmax = Keras", "max |p - p_Keras|", "batch 1 (ms)",
            f"all {n} (ms)", "images/s")
    rows = []
    ok = True
    jobs = _progress(names, args, desc="backends", unit="backend")
    for b in jobs:
        # warm up (Numba compiles kernels, and picks code paths, on their first use), then time
        model.predict(x[:1], backend=b)
        model.predict(x[:args.batch_size], batch_size=args.batch_size, backend=b)
        single = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            model.predict(x[i % n:i % n + 1], backend=b)
            single.append(time.perf_counter() - t0)
        whole = []
        probs = None
        for _ in range(args.repeat_all):
            t0 = time.perf_counter()
            probs = model.predict(x, batch_size=args.batch_size, backend=b)
            whole.append(time.perf_counter() - t0)
        pred = probs.argmax(axis=1)
        agree = int(np.sum(pred == keras_probs.argmax(axis=1)))
        ok = ok and agree == n
        t_all = statistics.median(whole)
        rows.append((b, f"{100 * np.mean(pred == labels):.2f}%", f"{agree}/{n} ({100 * agree / n:.0f}%)",
                     f"{float(np.max(np.abs(probs - keras_probs))):.1e}", f"{1e3 * statistics.median(single):.2f}",
                     f"{1e3 * t_all:.1f}", f"{n / t_all:.0f}"))
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print()
    print(f"Keras's own accuracy on these digits: {100 * keras_acc:.2f}% (its predictions are saved with the model).")
    print(f"Timings: median of {args.repeat} single-image calls and of {args.repeat_all} run(s) over all {n} "
          f"images (batch size {args.batch_size}), after warm-up calls.")
    if not ok:
        print("fastconv demo: error: a backend's predicted class differs from Keras's for some digits",
              file=sys.stderr)
        return 1
    print("Every backend predicts the same class as Keras for every digit.")
    return 0


def _save_demo_images(args):
    from . import data
    Image = _need_pillow()
    images, labels = data.demo_images()
    os.makedirs(args.save_images, exist_ok=True)
    count = min(args.count, len(labels))
    for i in range(count):
        Image.fromarray(images[i], mode="L").save(
            os.path.join(args.save_images, f"digit_{i:03d}_label{labels[i]}.png"))
    print(f"wrote {count} held-out digits as 28x28 PNGs to {args.save_images}")
    print(f"try:  fastconv predict demo {args.save_images} --scale 1/255")
    return 0


# ---------------------------------------------------------------------- summary

def cmd_summary(args):
    model = _load_model(args)
    if hasattr(model, "summary"):
        model.summary(print_fn=print)
        return 0
    print(_simple_summary(model))
    return 0


def _simple_summary(model):
    """A plainer table (name, type, output shape, parameters) for a fastconv without Model.summary."""
    shapes = {}
    names = [l.name for l in model.layers if l.class_name != "InputLayer"]
    if len(model.input_shapes) == 1 and model.input_shapes[0] is not None and None not in model.input_shapes[0][1:]:
        zeros = np.zeros((1,) + tuple(model.input_shapes[0][1:]), np.float32)
        outs = model.predict(zeros, outputs=names) if names else []
        shapes = {n: (None,) + tuple(np.shape(o)[1:]) for n, o in zip(names, outs) if hasattr(o, "shape")}
    rows, total = [], 0
    for l in model.layers:
        w = getattr(l, "weights", None)
        p = sum(int(a.size) for a in w.values()) if isinstance(w, dict) else 0
        total += p
        rows.append((f"{l.name} ({l.class_name})", _fmt_shape(shapes[l.name]) if l.name in shapes else "?", f"{p:,}"))
    head = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(3)]
    lines = [f'Model: "{model.name}"']
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in [head] + rows]
    lines.append(f"Total params: {total:,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- predict

def cmd_predict(args):
    backend = _check_backend(args.backend)
    out = args.output
    if out is not None and not out.lower().endswith((".npy", ".npz")):
        raise UserError(f"output {out!r}: expected a .npy file (one output) or a .npz file (any outputs)")
    labels = None
    if args.labels is not None:
        with open(args.labels, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    model = _load_model(args)
    if getattr(args, "scheduler", None) is not None:
        direct = out if out is not None and out.lower().endswith(".npy") else None
        result, names = _predict_dask(model, args, backend, out=direct)
        if direct is not None:   # written chunk by chunk as the results came
            shape = result.shape
            del result
            print(f"wrote {out}: {shape} float32" + (
                " (rows in the order of the sorted file names)" if os.path.isdir(args.input) else ""))
            return 0
    else:
        x, names = _read_input(args.input, model, args)
        result = _predict(model, x, args, args.batch_size, backend)
    if out is not None:
        return _write_output(out, result, model, names, args)
    if not isinstance(result, np.ndarray) or result.ndim != 2:
        shapes = (_fmt_shape(result.shape) if isinstance(result, np.ndarray)
                  else ", ".join(_fmt_shape(np.shape(r)) for r in (result.values() if isinstance(result, dict) else result)))
        print(f"the model's output is not one (samples, classes) array (got {shapes}); save it with -o OUT.npz")
        return 0
    k = min(args.top_k, result.shape[1])
    if labels is not None and len(labels) != result.shape[1]:
        raise UserError(f"--labels {args.labels!r} has {len(labels)} labels; the model has {result.shape[1]} classes")
    width = max(len(n) for n in names) if names else 0
    for name, row in zip(names, result):
        top = np.argsort(-row, kind="stable")[:k]
        print(f"{name.ljust(width)}  " + "  ".join(
            f"{labels[i] if labels else i}: {row[i]:.4f}" for i in top))
    return 0


_DASK_CONNECT_TIMEOUT = "20s"


def _predict_dask(model, args, backend, out=None):
    """(outputs, row names) of ``predict --scheduler``: INPUT streamed chunk by chunk
    (a .npy file through a memory map, a folder's images decoded per chunk, other inputs
    read whole) by :func:`fastconv.dask.predict_stream` on the threaded scheduler
    ("threads") or on the dask.distributed scheduler at ADDRESS; with ``out`` (a .npy
    path) the outputs are written there chunk by chunk."""
    from . import dask as fdask
    fdask._require_dask()
    path = args.input
    if len(model.input_names) != 1 or len(model.output_names) != 1:
        raise UserError(f"--scheduler runs single-input, single-output models only; the model has inputs "
                        f"{model.input_names} and outputs {model.output_names}")
    scale = getattr(args, "scale", None)
    if path.lower().endswith(".npy") and os.path.isfile(path):
        try:
            source = fdask.NpySource(path, scale=scale)
        except FastconvError as exc:
            raise UserError(str(exc).replace("fastconv.dask: ", "")) from None
        names = [f"[{i}]" for i in range(len(source))]
    elif os.path.isdir(path):
        files = _image_files(path)
        source = _ImageSource(files, _image_layout(model), scale)
        names = [os.path.basename(f) for f in files]
    else:
        x, names = _read_input(path, model, args)   # scaled there
        if isinstance(x, dict):
            raise UserError("--scheduler runs single-input models only")
        source = _ArraySource(x)
    rows = args.chunk_size or 8 * args.batch_size
    show = not getattr(args, "quiet", False) and sys.stdout.isatty() and sys.stderr.isatty()
    bar = _progress(None, args, desc="predicting", unit="sample", total=len(source)) if show else None
    kw = dict(out=out, chunk_size=rows, batch_size=args.batch_size, backend=backend,
              progress=None if bar is None or not hasattr(bar, "update") else bar.update)
    try:
        if args.scheduler == "threads":
            return fdask.predict_stream(model, source, **kw), names
        from distributed import Client
        try:
            client = Client(args.scheduler, timeout=_DASK_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(f"cannot connect to the dask scheduler at {args.scheduler!r}: {_one_line(exc)}") from None
        with client:
            return fdask.predict_stream(model, source, client=client, **kw), names
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()


class _ArraySource:
    """An in-memory array as a :func:`fastconv.dask.predict_stream` source."""

    def __init__(self, x):
        self.x, self.shape, self.dtype = x, x.shape, x.dtype

    def __len__(self):
        return self.shape[0]

    def read(self, start, stop):
        return self.x[start:stop]


def _write_output(out, result, model, names, args):
    if out.lower().endswith(".npy"):
        if not isinstance(result, np.ndarray):
            raise UserError(f"the model has {len(result)} outputs; write them to a .npz file, not {out!r}")
        np.save(out, result)
        print(f"wrote {out}: {result.shape} {result.dtype}" + (
            " (rows in the order of the sorted file names)" if os.path.isdir(args.input) else ""))
        return 0
    if isinstance(result, dict):
        arrays = dict(result)
    elif isinstance(result, list):
        arrays = {n if n not in model.output_names[:i] else f"{n}_{i}": r
                  for i, (n, r) in enumerate(zip(model.output_names, result))}
    else:
        arrays = {model.output_names[0]: result}
    arrays["inputs"] = np.asarray(names)
    np.savez(out, **arrays)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


# ---------------------------------------------------------------------- profile

def cmd_profile(args):
    backend = _check_backend(args.backend)
    model = _load_model(args)
    if not hasattr(model, "profile"):
        raise UserError("profile is not available yet: this fastconv's Model has no profile()")
    if args.input is not None:
        x, _ = _read_input(args.input, model, args)
        x = _rows(x, 0, args.batch_size)
    else:
        rng = np.random.default_rng(0)
        xs = []
        for name, shape in zip(model.input_names, model.input_shapes):
            if shape is None or None in shape[1:]:
                raise UserError(f"input {name!r} has shape {_fmt_shape(shape) if shape else '(unknown)'}; give "
                                f"an input of the size to profile with --input FILE")
            xs.append(rng.random((args.batch_size,) + tuple(shape[1:]), dtype=np.float32))
        x = xs[0] if len(xs) == 1 else xs
    print(model.profile(x, repeat=args.repeat, backend=backend))
    return 0


# ---------------------------------------------------------------------- bench

def cmd_bench(args):
    from . import __version__, _quickbench, available_backends, get_num_threads
    names = [_check_backend(b) for b in args.backend] if args.backend else available_backends()
    cases = [c for c in _quickbench.CASES if args.filter is None or args.filter.lower() in c.name.lower()]
    if not cases:
        raise UserError(f"no case matches --filter {args.filter!r}; the cases are: "
                        + "; ".join(c.name for c in _quickbench.CASES))
    print(f"fastconv {__version__}, {get_num_threads()} thread(s), float32; median of {args.repeat} call(s) "
          f"after a warm-up; '-': the backend lacks the op")
    jobs = len(cases) * len(names)
    results = _quickbench.run(names, cases, args.repeat,
                              progress=lambda it: _progress(it, args, total=jobs, desc="bench", unit="case"))
    print(_quickbench.table(results, names))
    return 0


# ---------------------------------------------------------------------- features

def cmd_features(args):
    from . import viz
    viz._matplotlib()  # fail early, with the install hint, when matplotlib is missing
    model = _load_model(args)
    x, names = _read_input(args.input, model, args)
    first = next(iter(x.values())) if isinstance(x, dict) else x
    if isinstance(x, dict) or len(model.input_shapes) != 1:
        raise UserError("features draws single-input models only")
    if not 0 <= args.index < first.shape[0]:
        raise UserError(f"--index {args.index}: the input holds {first.shape[0]} sample(s)")
    for name in args.layer:
        model.get_layer(name)   # an unknown name fails here, listing the layers
    viz.feature_maps(model, x[args.index:args.index + 1], args.layer, path=args.output, max_maps=args.max_maps,
                     cmap=args.cmap)
    print(f"wrote {args.output}: feature maps of {', '.join(args.layer)} for {names[args.index]}")
    return 0


# ---------------------------------------------------------------------- parser and main

def build_parser():
    """The argparse parser of the ``fastconv`` command."""
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")

    p = _Parser(prog="fastconv", parents=[common],
                description="Run Keras models and fastconv's convolution kernels without TensorFlow.",
                epilog="MODEL: a .keras, .h5 or .json (with --weights) file, or 'demo' for the shipped "
                       "digit classifier. Run 'fastconv COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"fastconv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name, func, help_, description=None):
        sp = sub.add_parser(name, parents=[common], help=help_, description=description or help_)
        sp.set_defaults(func=func)
        return sp

    def model_args(sp):
        sp.add_argument("model", metavar="MODEL", help="model file (.keras, .h5, .json) or 'demo'")
        sp.add_argument("--weights", metavar="FILE", help="weights file for an architecture-only MODEL (.json)")

    def backend_arg(sp):
        sp.add_argument("--backend", "-b", default="auto", metavar="B",
                        help="auto (default) or an available backend: numba, cython, reference")

    d = add("demo", cmd_demo, "run the shipped CNN digit classifier: accuracy, agreement with Keras, latency",
            "Run the CNN shipped with fastconv (the seeds' sign-MNIST architecture with 10 classes, trained "
            "with Keras on scikit-learn's digits) on its held-out digits with every available backend: "
            "accuracy, agreement with Keras's saved predictions, latency. Exits 1 if a backend's predicted "
            "class ever differs from Keras's.")
    d.add_argument("--backend", "-b", action="append", metavar="B",
                   help="run only this backend, or auto (repeatable; default: every available backend)")
    d.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                   help="batch size of the run over all held-out digits (default 32)")
    d.add_argument("--repeat", type=_positive_int, default=20, metavar="N",
                   help="single-image calls timed per backend (default 20)")
    d.add_argument("--repeat-all", type=_positive_int, default=3, metavar="N",
                   help="runs over all held-out digits timed per backend (default 3)")
    d.add_argument("--save-images", metavar="DIR",
                   help="instead: write held-out digits as PNG files to DIR (needs Pillow)")
    d.add_argument("--count", type=_positive_int, default=10, metavar="N",
                   help="how many digits --save-images writes (default 10)")

    s = add("summary", cmd_summary, "print the layers, output shapes, parameters and MACs of a model")
    model_args(s)

    pr = add("predict", cmd_predict, "run a model on arrays or images",
             "Run MODEL on INPUT: a .npy file (one batch), a .npz file (an array, or one per input name), an "
             "image file or a folder of images. Images are decoded with Pillow, converted to the model's "
             "channels (L for 1, RGB for 3), resized (bilinear) to the model's input height x width, and "
             "given as float32 with their raw 0..255 values; --scale 1/255 scales them (and arrays) to [0, 1]. "
             "Prints the top-K classes of each input, or writes the outputs with -o.")
    model_args(pr)
    pr.add_argument("input", metavar="INPUT", help=".npy, .npz, an image file or a folder of images")
    pr.add_argument("-o", "--output", metavar="OUT", help="write the outputs to OUT.npy (one output) or OUT.npz")
    pr.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="samples per batch (default 32)")
    backend_arg(pr)
    pr.add_argument("--top-k", type=_positive_int, default=3, metavar="K", help="classes printed per input (default 3)")
    pr.add_argument("--scale", type=_scale, metavar="S",
                    help="multiply the input by S, e.g. 1/255 (default: raw values, 0..255 for images)")
    pr.add_argument("--key", metavar="NAME", help="the array of a .npz INPUT to use")
    pr.add_argument("--labels", metavar="FILE", help="class names, one per line, for the printed top-K")
    pr.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on Dask (needs the dask extra): 'threads' for the threaded scheduler, or the "
                         "address of a dask.distributed scheduler (tcp://host:8786); a .npy INPUT is memory-mapped")
    pr.add_argument("--chunk-size", type=_positive_int, metavar="N",
                    help="with --scheduler: samples per dask chunk, the unit of work (default 8 x --batch-size)")

    pf = add("profile", cmd_profile, "time every layer of a model: ms and GFLOP/s",
             "Time every step of the execution graph (folded/fused layers named together) on a random input "
             "in [0, 1) of the model's input shape (or on --input), median of --repeat runs.")
    model_args(pf)
    pf.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="samples per run (default 1)")
    pf.add_argument("--repeat", type=_positive_int, default=10, metavar="N", help="timed runs (default 10)")
    pf.add_argument("--input", metavar="FILE", help="profile on the first --batch-size samples of FILE (as predict's INPUT)")
    pf.add_argument("--scale", type=_scale, metavar="S", help="multiply --input by S, e.g. 1/255")
    backend_arg(pf)

    b = add("bench", cmd_bench, "compare the available backends on a few canonical ops (median ms)")
    b.add_argument("--backend", "-b", action="append", metavar="B",
                   help="time only this backend, or auto (repeatable; default: every available backend)")
    b.add_argument("--repeat", type=_positive_int, default=5, metavar="N", help="timed calls per case (default 5)")
    b.add_argument("--filter", metavar="TEXT", help="only the cases whose name contains TEXT (e.g. pool, conv2d)")

    f = add("features", cmd_features, "draw a layer's feature maps as a grid of images (needs matplotlib)",
            "Draw the feature maps that one or more layers compute for one input (image, .npy or .npz, read "
            "as by predict) as grids of small images, each map on its own colour scale.")
    model_args(f)
    f.add_argument("input", metavar="INPUT", help="an image file, .npy or .npz (the --index'th sample is drawn)")
    f.add_argument("--layer", "-l", action="append", required=True, metavar="NAME",
                   help="layer whose output to draw (repeatable: one grid per layer)")
    f.add_argument("-o", "--output", required=True, metavar="OUT", help="picture file to write (.png, .pdf, .svg)")
    f.add_argument("--scale", type=_scale, metavar="S", help="multiply the input by S, e.g. 1/255")
    f.add_argument("--index", type=int, default=0, metavar="I", help="which sample of an array input (default 0)")
    f.add_argument("--key", metavar="NAME", help="the array of a .npz INPUT to use")
    f.add_argument("--max-maps", type=_positive_int, default=64, metavar="N", help="maps drawn per layer (default 64)")
    f.add_argument("--cmap", default="viridis", metavar="NAME", help="matplotlib colour map (default viridis)")
    return p


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None):
    """Run the ``fastconv`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"fastconv {args.command}"
    debug = getattr(args, "debug", False)
    from .errors import FastconvError
    from .viz import MissingDependencyError
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, FastconvError, MissingDependencyError) as exc:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if debug:
            raise
        what = f"{exc.strerror}: {exc.filename!r}" if exc.strerror and exc.filename else _one_line(exc)
        print(f"{prog}: error: {what}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        print(f"{prog}: error: {type(exc).__name__}: {_one_line(exc)} (this may be a bug in fastconv; rerun "
              f"with --debug for the traceback)", file=sys.stderr)
        return 1
