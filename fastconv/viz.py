"""Pictures of what a model computes: a layer's feature maps as a grid (needs matplotlib).

``pip install "fastconv[viz]"`` installs matplotlib; fastconv imports it only
when a function here is called, and draws with the Agg backend (no display,
no GUI toolkit; the global pyplot backend is left alone).

Like the convolution -> ReLU -> pooling walkthrough of the seed documents,
each map is shown on its own colour scale, so the pattern a filter responds to
is visible whatever its magnitude.
"""

import math

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["feature_maps", "MissingDependencyError"]


class MissingDependencyError(ImportError):
    """An optional dependency (an extra of the ``fastconv`` package) is not installed."""


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            f"fastconv.viz needs matplotlib, which is not installed ({exc}); install it with "
            f"pip install \"fastconv[viz]\" (or pip install matplotlib)") from exc
    return Figure, FigureCanvasAgg


def _one_sample(x):
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"feature_maps: argument `x` must be a real numeric array; got dtype {x.dtype}")
    if x.ndim == 0:
        raise InvalidArgumentError("feature_maps: argument `x` must be a sample or a batch of samples; got a scalar")
    return x


def _maps(y, fmt):
    """One sample's layer output -> (H, W, C) maps, or an error for a non-2-D output."""
    if y.ndim != 4:
        raise InvalidArgumentError(
            f"has output shape {tuple(y.shape)}: not a 2-D feature map (batch, height, width, channels)")
    y = y[0]
    return np.moveaxis(y, 0, -1) if fmt == "channels_first" else y


def feature_maps(model, x, layer, path=None, max_maps=64, cmap="viridis", show_input=True, dpi=100):
    """Draw the feature maps a layer (or several) computes for one input, as grids of small images.

    Parameters
    ----------
    model : fastconv.Model
        From :func:`fastconv.load_model`.
    x : array_like
        One sample, with or without the batch axis ((H, W, C) or (1, H, W, C)
        for a 2-D image model); of a batch, the first sample is drawn.
    layer : str or list of str
        Layer name(s); each must give a 2-D feature map (Conv2D, pooling,
        BatchNormalization, activations ... on images). One grid per layer, in
        the order given.
    path : str or os.PathLike, optional
        Where to save the picture (the format follows the extension: .png,
        .pdf, .svg, .jpg ...). Without it, nothing is written.
    max_maps : int, default 64
        Draw at most this many channels of a layer (its first ones).
    cmap : str, default "viridis"
        Matplotlib colour map of the feature maps (the input is drawn in grey
        for one channel).
    show_input : bool, default True
        Draw the input sample above the grids.
    dpi : int, default 100
        Resolution of a saved raster picture.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (drawn with the Agg backend; not registered with pyplot).

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed (an ``ImportError``).
    InvalidArgumentError
        A layer name the model lacks, an output that is not a 2-D map, a bad ``max_maps``.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    if isinstance(max_maps, bool) or not isinstance(max_maps, (int, np.integer)) or max_maps < 1:
        raise InvalidArgumentError(f"feature_maps: argument `max_maps` must be a positive integer; got {max_maps!r}")
    names = [layer] if isinstance(layer, str) else list(layer) if isinstance(layer, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise InvalidArgumentError(f"feature_maps: argument `layer` must be a layer name or a list of them; got {layer!r}")
    x = _one_sample(x)
    expected = model.input_shapes[0] if len(model.input_shapes) == 1 else None
    if expected is not None and x.ndim == len(expected) - 1:
        x = x[None]
    x = x[:1]
    outs = model.predict(x, outputs=names)
    blocks = []
    for name, y in zip(names, outs):
        lyr = model.get_layer(name)
        try:
            maps = _maps(np.asarray(y), getattr(lyr, "fmt", "channels_last"))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"feature_maps: layer {name!r} ({lyr.class_name}) {exc}") from None
        blocks.append((name, lyr.class_name, maps))

    img = None
    if show_input and x.ndim == 4:
        fmt = "channels_first" if (x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3)) else "channels_last"
        img = x[0] if fmt == "channels_last" else np.moveaxis(x[0], 0, -1)
        if img.shape[-1] not in (1, 3):
            img = None

    width = 10.0
    heights = []
    layout = []
    for _, _, maps in blocks:
        n = min(maps.shape[-1], max_maps)
        cols = min(n, max(4, math.ceil(math.sqrt(n * 2))))
        rows = math.ceil(n / cols)
        h, w = maps.shape[:2]
        cell = width / cols
        heights.append(rows * cell * h / max(w, 1) + 0.5)
        layout.append((n, rows, cols))
    if img is not None:
        heights.insert(0, 2.2)
    fig = Figure(figsize=(width, sum(heights)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    subs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    k = 0
    if img is not None:
        ax = subs[0].subplots()
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray")
        else:
            lo, hi = float(img.min()), float(img.max())
            ax.imshow((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img))
        ax.set_axis_off()
        subs[0].suptitle(f"input {tuple(x.shape[1:])}", fontsize=10)
        k = 1
    for (name, cls, maps), (n, rows, cols), sub in zip(blocks, layout, subs[k:]):
        axes = sub.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if i < n:
                ax.imshow(maps[..., i], cmap=cmap, interpolation="nearest")
        h, w, c = maps.shape
        more = f", first {n} of {c} maps" if n < c else ""
        sub.suptitle(f"{name} ({cls}): {h}x{w}x{c}{more}", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
