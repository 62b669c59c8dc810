"""Data shipped with fastconv: the small digit classifier that ``fastconv demo`` runs.

* ``digits_cnn.keras``: the seed's sign-MNIST CNN (three Conv2D + BatchNormalization
  + MaxPool blocks, Dense 512, softmax) with a 10-class last layer, trained with
  Keras on scikit-learn's 8x8 handwritten digits scaled to 28x28
  (``tests/fixtures/train_demo_model.py`` made both files);
* ``digits_heldout.npz``: the digits held out of training: ``images`` (N, 28, 28)
  uint8 0..255, ``labels`` (N,), and ``keras_probs`` (N, 10), Keras's own
  predictions of the saved model.

The model takes ``images / 255`` as float32, shape (N, 28, 28, 1).

>>> import fastconv.data as d
>>> x, labels, keras_probs = d.demo_heldout()
>>> x.shape, x.dtype, float(x.max()) <= 1.0, keras_probs.shape
((360, 28, 28, 1), dtype('float32'), True, (360, 10))
"""

import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))

#: Path of the demo model (a Keras 3 ``.keras`` archive).
DEMO_MODEL = os.path.join(_HERE, "digits_cnn.keras")
#: Path of its held-out digits and Keras's predictions (``.npz``).
DEMO_HELDOUT = os.path.join(_HERE, "digits_heldout.npz")


def demo_model(**kwargs):
    """The demo classifier, loaded with :func:`fastconv.load_model` (``kwargs`` passed on)."""
    from .. import load_model
    return load_model(DEMO_MODEL, **kwargs)


def demo_heldout():
    """``(x, labels, keras_probs)``: the held-out digits as model input ((N, 28, 28, 1) float32
    in [0, 1]), their labels, and Keras's predicted probabilities for exactly that input."""
    with np.load(DEMO_HELDOUT, allow_pickle=False) as d:
        images, labels, probs = d["images"], d["labels"], d["keras_probs"]
    x = images[..., None].astype(np.float32) / np.float32(255.0)
    return x, labels, probs


def demo_images():
    """The held-out digits as uint8 images (N, 28, 28), 0..255, and their labels."""
    with np.load(DEMO_HELDOUT, allow_pickle=False) as d:
        return d["images"], d["labels"]
