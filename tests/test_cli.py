"""The ``fastconv`` command (fastconv/cli.py): run in-process through ``main([...])``, plus
one ``python -m fastconv demo --quiet`` subprocess smoke test."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import cli, data

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "models")


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``fastconv argv``."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:   # argparse: --help, usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc, out, err, *words):
    lines = err.strip().splitlines()
    assert rc not in (0, None), (rc, out, err)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("fastconv"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def heldout():
    return data.demo_heldout()


@pytest.fixture
def x_npy(tmp_path, heldout):
    path = tmp_path / "x.npy"
    np.save(path, heldout[0][:5])
    return path


def write_pngs(folder, images):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install Pillow)")
    folder.mkdir(exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"digit_{i}.png"
        Image.fromarray(img, mode="L").save(p)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------- demo

def test_demo_data_shipped():
    """The model and the held-out digits are in the package (pyproject package-data), small."""
    assert os.path.getsize(data.DEMO_MODEL) < 1_500_000
    assert os.path.getsize(data.DEMO_HELDOUT) < 300_000
    x, labels, probs = data.demo_heldout()
    assert x.shape[1:] == (28, 28, 1) and len(x) == len(labels) == len(probs) >= 300
    assert set(np.unique(labels)) == set(range(10))


def test_demo_one_backend(capsys):
    backend = fastconv.available_backends()[0]
    rc, out, err = run(capsys, "demo", "--quiet", "--backend", backend, "--repeat", 2, "--repeat-all", 1)
    assert rc == 0, err
    n = len(data.demo_heldout()[1])
    row = next(line for line in out.splitlines() if line.startswith(backend))
    assert f"{n}/{n} (100%)" in row
    acc = float(row.split()[1].rstrip("%"))
    assert acc > 95.0
    assert "Every backend predicts the same class as Keras" in out
    assert err == ""


def test_demo_subprocess_smoke():
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "fastconv", "demo", "--quiet"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Every backend predicts the same class as Keras for every digit." in proc.stdout
    for b in fastconv.available_backends():
        assert any(line.startswith(b) and "(100%)" in line for line in proc.stdout.splitlines()), b
    assert proc.stderr == ""


def test_demo_save_images_then_predict_folder(capsys, tmp_path):
    pytest.importorskip("PIL", reason="Pillow is not installed (pip install Pillow)")
    rc, out, err = run(capsys, "demo", "--save-images", tmp_path / "d", "--count", 3)
    assert rc == 0, err
    files = sorted(os.listdir(tmp_path / "d"))
    assert len(files) == 3
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "d", "--scale", "1/255", "--top-k", 1)
    assert rc == 0, err
    for f, line in zip(files, out.strip().splitlines()):
        assert line.startswith(f)
        label = f.split("label")[1].split(".")[0]
        assert line.split()[1] == f"{label}:"


# ---------------------------------------------------------------------- summary

def test_summary(capsys):
    rc, out, err = run(capsys, "summary", "demo")
    assert rc == 0, err
    assert "conv2d_1 (Conv2D)" in out and "Total params: 256,867" in out


def test_summary_without_model_summary(capsys, monkeypatch):
    """The plainer fallback table, for a fastconv whose Model has no summary()."""
    if hasattr(fastconv.Model, "summary"):
        monkeypatch.delattr(fastconv.Model, "summary")
    rc, out, err = run(capsys, "summary", os.path.join(FIXTURES, "sign_mnist.keras"))
    assert rc == 0, err
    assert "(None, 14, 14, 50)" in out and "Total params: 264,049" in out


# ---------------------------------------------------------------------- predict

def test_predict_npy_prints_top_k(capsys, x_npy, heldout):
    rc, out, err = run(capsys, "predict", "demo", x_npy, "--top-k", 2)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5
    expected = heldout[2][:5].argmax(axis=1)
    for i, line in enumerate(lines):
        assert line.startswith(f"[{i}]")
        assert len(line.split()) == 1 + 2 * 2
        assert line.split()[1] == f"{expected[i]}:"


def test_predict_npy_to_npy_and_npz(capsys, tmp_path, x_npy, heldout):
    model = data.demo_model()
    want = model.predict(np.load(x_npy))
    rc, out, err = run(capsys, "predict", "demo", x_npy, "-o", tmp_path / "p.npy", "--batch-size", 2,
                       "--backend", "reference")
    assert rc == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, rtol=1e-4, atol=1e-6)
    rc, out, err = run(capsys, "predict", "demo", x_npy, "-o", tmp_path / "p.npz")
    assert rc == 0, err
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_allclose(z["dense_1"], want, rtol=1e-5, atol=1e-7)
        assert list(z["inputs"]) == [f"[{i}]" for i in range(5)]


def test_predict_npz_key(capsys, tmp_path, heldout):
    np.savez(tmp_path / "a.npz", images=heldout[0][:2], other=np.zeros(3))
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "a.npz")
    assert_user_error(rc, out, err, "--key")
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "a.npz", "--key", "images")
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 2


def test_predict_folder_of_pngs(capsys, tmp_path, heldout):
    images, labels = data.demo_images()
    write_pngs(tmp_path / "imgs", images[:2])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")   # ignored: not an image extension
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "imgs", "--scale", "1/255")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["digit_0.png", "digit_1.png"]
    assert [int(line.split()[1].rstrip(":")) for line in lines] == list(heldout[2][:2].argmax(axis=1))
    # the PNGs hold exactly the held-out pixels: the same probabilities as the arrays
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "imgs", "--scale", "1/255", "-o", tmp_path / "p.npz")
    assert rc == 0, err
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_allclose(z["dense_1"], heldout[2][:2], atol=1e-5)
        assert list(z["inputs"]) == ["digit_0.png", "digit_1.png"]


def test_predict_image_converted_and_resized(capsys, tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install Pillow)")
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[8:32, 6:24] = (255, 200, 100)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "one.png")
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "one.png", "--top-k", 10)
    assert rc == 0, err
    assert out.startswith("one.png") and len(out.split()) == 1 + 2 * 10
    # a 3-channel model gets RGB at its own input size, raw 0..255 (channels last, or first)
    class Fake:
        input_names = ["img"]
        input_shapes = [(None, 8, 6, 3)]
    x = cli._read_images([str(tmp_path / "one.png")], Fake(), cli.argparse.Namespace(quiet=True))
    assert x.shape == (1, 8, 6, 3) and x.dtype == np.float32
    assert x[0, 4, 3].tolist() == [255.0, 200.0, 100.0] and x[0, 0, 0].tolist() == [0.0, 0.0, 0.0]
    Fake.input_shapes = [(None, 3, 8, 6)]
    y = cli._read_images([str(tmp_path / "one.png")], Fake(), cli.argparse.Namespace(quiet=True))
    np.testing.assert_array_equal(y, np.moveaxis(x, -1, 1))


def test_predict_labels_file(capsys, tmp_path, x_npy):
    (tmp_path / "labels.txt").write_text("\n".join(f"digit-{i}" for i in range(10)))
    rc, out, err = run(capsys, "predict", "demo", x_npy, "--labels", tmp_path / "labels.txt", "--top-k", 1)
    assert rc == 0, err
    assert out.splitlines()[0].split()[1].startswith("digit-")


def test_predict_without_pillow(capsys, tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)   # `import PIL` now raises ImportError
    rc, out, err = run(capsys, "predict", "demo", tmp_path / "a.png")
    assert_user_error(rc, out, err, "Pillow", "pip install")


# ---------------------------------------------------------------------- user errors: one line, exit != 0

def _unsupported_json(tmp_path):
    with open(os.path.join(FIXTURES, "sign_mnist.json")) as f:
        cfg = json.load(f)
    cfg["config"]["layers"][1]["class_name"] = "FancyNewLayer"
    path = tmp_path / "unsupported.json"
    path.write_text(json.dumps(cfg))
    return ["summary", path, "--weights", os.path.join(FIXTURES, "sign_mnist.weights.h5")]


USER_ERRORS = {
    "missing model": (lambda t: ["summary", t / "missing.keras"], "does not exist"),
    "not a model": (lambda t: ["summary", t / "x.npy"], "is not a Keras model file"),
    "unsupported model": (_unsupported_json, "FancyNewLayer"),
    "missing input": (lambda t: ["predict", "demo", t / "nothing.npy"], "does not exist"),
    "wrong shape": (lambda t: ["predict", "demo", t / "wrong.npy"], "expects shape (None, 28, 28, 1)"),
    "unknown backend": (lambda t: ["predict", "demo", t / "x.npy", "--backend", "tpu"], "unknown backend 'tpu'"),
    "bad image": (lambda t: ["predict", "demo", t / "bad.png"], "cannot read image"),
    "unsupported input": (lambda t: ["predict", "demo", t / "notes.txt"], "expected a .npy or .npz file"),
    "bad output": (lambda t: ["predict", "demo", t / "x.npy", "-o", t / "out.csv"], "expected a .npy"),
    "empty folder": (lambda t: ["predict", "demo", t / "empty"], "holds no image file"),
    "corrupt npy": (lambda t: ["predict", "demo", t / "corrupt.npy"], "cannot read"),
    "object npy": (lambda t: ["predict", "demo", t / "objects.npy"], "cannot read"),
    "not 2-D maps": (lambda t: ["features", "demo", t / "x.npy", "--layer", "dense", "-o", t / "f.png"],
                     "not a 2-D feature map"),
    "unknown layer": (lambda t: ["features", "demo", t / "x.npy", "--layer", "nope", "-o", t / "f.png"],
                      "no layer 'nope'"),
    "usage": (lambda t: ["predict", "demo"], "required"),
    "bad --scale": (lambda t: ["predict", "demo", t / "x.npy", "--scale", "one"], "--scale"),
    "no command": (lambda t: [], "required"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_error_is_one_line(capsys, tmp_path, x_npy, case):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 20, 28, 1), np.float32))
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "empty").mkdir()
    make, words = USER_ERRORS[case]
    rc, out, err = run(capsys, *make(tmp_path))
    assert_user_error(rc, out, err, words)


def test_unexpected_error_one_line_unless_debug(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("something\nbroke")
    monkeypatch.setattr(cli, "cmd_summary", boom)
    rc, out, err = run(capsys, "summary", "demo")
    assert_user_error(rc, out, err, "RuntimeError: something broke", "--debug")
    assert rc == 1
    with pytest.raises(RuntimeError):
        cli.main(["summary", "demo", "--debug"])
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "summary", "demo"])


# ---------------------------------------------------------------------- profile, bench

def test_profile(capsys):
    rc, out, err = run(capsys, "profile", "demo", "--batch-size", 2, "--repeat", 1)
    assert rc == 0, err
    assert "GFLOP/s" in out and "conv2d_1" in out


def test_profile_not_available(capsys, monkeypatch):
    if hasattr(fastconv.Model, "profile"):
        monkeypatch.delattr(fastconv.Model, "profile")
    rc, out, err = run(capsys, "profile", "demo")
    assert_user_error(rc, out, err, "not available yet")


def test_bench(capsys):
    rc, out, err = run(capsys, "bench", "--repeat", 1, "--filter", "global_avg")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert "median of 1 call" in lines[0]
    for b in fastconv.available_backends():
        assert f"{b} ms" in lines[1]
    assert lines[3].startswith("global_avg_pool2d") and len(lines) == 4


# ---------------------------------------------------------------------- progress bar

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    args = cli.argparse.Namespace(quiet=False)
    items = [1, 2, 3]
    assert cli._progress(items, args) is items          # capsys/pytest: not a terminal
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setattr(sys, "stderr", _Tty())
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install tqdm)")
    bar = cli._progress(items, args)
    assert bar is not items and list(bar) == items
    assert cli._progress(items, cli.argparse.Namespace(quiet=True)) is items
    monkeypatch.setitem(sys.modules, "tqdm", None)      # without tqdm: no bar, no error
    assert cli._progress(items, args) is items


# ---------------------------------------------------------------------- features / viz

def test_features_png(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")
    images, _ = data.demo_images()
    png = write_pngs(tmp_path, images[:1])[0]
    out_png = tmp_path / "maps.png"
    rc, out, err = run(capsys, "features", "demo", png, "--layer", "conv2d", "--layer", "max_pooling2d_1",
                       "--scale", "1/255", "-o", out_png)
    assert rc == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000


def test_viz_feature_maps(tmp_path, heldout):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")
    from fastconv import viz
    model = data.demo_model()
    fig = viz.feature_maps(model, heldout[0][0], "conv2d_2", max_maps=8)
    assert len(fig.subfigs) == 2                                   # the input, one layer
    assert sum(1 for ax in fig.subfigs[1].axes if ax.images) == 8
    fig = viz.feature_maps(model, heldout[0][:3], ["conv2d", "max_pooling2d"], path=tmp_path / "f.png",
                           show_input=False)
    assert len(fig.subfigs) == 2 and (tmp_path / "f.png").stat().st_size > 0
    with pytest.raises(fastconv.InvalidArgumentError, match="not a 2-D feature map"):
        viz.feature_maps(model, heldout[0][0], "flatten")


def test_features_without_matplotlib(capsys, monkeypatch, tmp_path, x_npy):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = run(capsys, "features", "demo", x_npy, "--layer", "conv2d", "-o", tmp_path / "f.png")
    assert_user_error(rc, out, err, "matplotlib", "pip install")
