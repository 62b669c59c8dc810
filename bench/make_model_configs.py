"""Write the architectures of the benchmarked Keras applications as JSON (no weights).

Needs TensorFlow + Keras 3 (``pip install tensorflow-cpu``); the benchmarks never
import it: they read these files and give the models seeded random weights
(:func:`fastconv.models.from_config`).

    python bench/make_model_configs.py        # writes bench/models/<name>.json
"""

import json
import os

import keras

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

MODELS = {
    "mobilenet_v2": lambda: keras.applications.MobileNetV2(weights=None),
    "resnet50": lambda: keras.applications.ResNet50(weights=None),
}


def main():
    os.makedirs(HERE, exist_ok=True)
    for name, make in MODELS.items():
        model = make()
        text = model.to_json()
        json.loads(text)  # valid JSON, or fail here rather than in the benchmark
        path = os.path.join(HERE, f"{name}.json")
        with open(path, "w") as fh:
            fh.write(text)
            fh.write("\n")
        print(f"{path}: {len(model.layers)} layers, {model.count_params()} parameters, "
              f"input {model.input_shape}, keras {keras.__version__}")


if __name__ == "__main__":
    main()
