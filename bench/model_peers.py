"""Peers for the model benchmarks: Keras 3 on TensorFlow (``model.predict`` and a compiled
``tf.function`` call) and ONNX Runtime on the model converted with tf2onnx.

Nothing here imports fastconv: a peer model is built from the same source as fastconv's
(a ``.keras`` file, or the architecture JSON plus fastconv's random weights, passed as
``{layer name: [arrays]}``), so both compute the same function. Each builder raises
:class:`PeerUnavailable` with the reason when its packages are missing.
"""

import os


class PeerUnavailable(Exception):
    """A peer cannot run here; the message says why (shown as the skip reason)."""


def _import(module, install):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise PeerUnavailable(f"{module} is not importable ({exc}); install it with: {install}") from None


def tensorflow():
    return _import("tensorflow", "pip install tensorflow-cpu==2.21.*")


def keras_model(source, weights=None):
    """A Keras model from a ``.keras`` file, or from architecture JSON text with ``weights``
    given as {layer name: [arrays in the layer's variable order]}."""
    tensorflow()
    keras = _import("keras", "pip install keras>=3")
    if isinstance(source, str) and source.endswith(".keras"):
        return keras.saving.load_model(source, compile=False)
    model = keras.models.model_from_json(source)
    for layer_name, arrays in (weights or {}).items():
        model.get_layer(layer_name).set_weights(arrays)
    return model


def keras_predict(model, x):
    """``model.predict`` on the whole batch (Keras's usual inference call)."""
    n = len(x)
    return lambda: model.predict(x, batch_size=n, verbose=0)


def tf_function(model, x):
    """A compiled graph call: ``tf.function(model)`` on a tensor made once."""
    tf = tensorflow()
    fn = tf.function(lambda t: model(t, training=False))
    tx = tf.constant(x)
    fn(tx)  # trace and compile outside the timing
    return lambda: fn(tx).numpy()


def _to_onnx(model, sample_shape):
    """The ONNX ModelProto of ``model`` (tf2onnx, from a ``tf.function`` with a free batch axis)."""
    tf = tensorflow()
    tf2onnx = _import("tf2onnx", "pip install tf2onnx")
    _import("onnxruntime", "pip install onnxruntime")
    spec = (tf.TensorSpec((None,) + tuple(sample_shape), tf.float32, name="input"),)
    fn = tf.function(lambda t: model(t, training=False), input_signature=spec)
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    except Exception as exc:  # a converter that cannot handle this TensorFlow: not our failure
        raise PeerUnavailable(f"tf2onnx could not convert the model: {type(exc).__name__}: {exc}") from None
    return proto


def onnxruntime_call(model, x, threads=None):
    """ONNX Runtime on the model converted by tf2onnx."""
    ort = _import("onnxruntime", "pip install onnxruntime")
    proto = _to_onnx(model, x.shape[1:])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})[0]


#: impl name -> builder(keras model, x) giving a zero-argument call that returns the output.
PEERS = {
    "keras-predict": keras_predict,
    "tf-function": tf_function,
    "onnxruntime": onnxruntime_call,
}


# ----------------------------------------------------------------- new process to first prediction
# Each writes the file its fresh process loads and returns that process's code: it loads the model,
# predicts on the array saved at x_path and saves the result at y_path.

def keras_startup(model, path, x_path, y_path):
    """Keras 3 on TensorFlow: ``keras.saving.load_model`` of a ``.keras`` file, then ``predict``."""
    model.save(path)
    return ("import numpy as np, keras; "
            f"m = keras.saving.load_model({path!r}, compile=False); "
            f"np.save({y_path!r}, m.predict(np.load({x_path!r}), verbose=0))")


def onnxruntime_startup(model, path, x_path, y_path):
    """ONNX Runtime: an ``InferenceSession`` on a ``.onnx`` file (converted here, once), then ``run``."""
    import numpy as np
    proto = _to_onnx(model, np.load(x_path).shape[1:])
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())
    return ("import numpy as np, onnxruntime as ort; "
            f"s = ort.InferenceSession({path!r}, providers=['CPUExecutionProvider']); "
            f"np.save({y_path!r}, s.run(None, {{s.get_inputs()[0].name: np.load({x_path!r})}})[0])")


#: impl name -> (file suffix, writer(keras model, path, x_path, y_path) -> code for ``python -c``).
STARTUP_PEERS = {
    "keras-predict": (".keras", keras_startup),
    "onnxruntime": (".onnx", onnxruntime_startup),
}
