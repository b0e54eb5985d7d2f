"""Measures `ipguard embed --base-model` on real Fashion-MNIST (embed issue's acceptance figure).

Trains a plain 10-class Keras CNN (inputs in [0, 1], as most trained models
take) for --epochs, in Keras 3 (`import keras`, what TensorFlow 2.16+ gives a
user) or tf_keras, saves it, protects it with `ipguard embed --base-model`
(2 epochs by default) and prints the report's figures.

    python benchmarks/protect_base_model.py --out runs/base-protect --keras 3
"""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import click

from keras_ipguard import data
from keras_ipguard.backend import keras as _keras
from keras_ipguard.backend import keras3


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/base-protect"), show_default=True)
@click.option("--epochs", default=8, show_default=True, help="Epochs of the plain model before protection.")
@click.option("--keras", "flavour", type=click.Choice(["3", "tf_keras"]), default="3", show_default=True,
              help="The Keras the user's model is built and saved with.")
def main(out, epochs, flavour):
    keras = keras3() if flavour == "3" else _keras()
    keras.utils.set_random_seed(0)
    x, y = data.load_split("fashion_mnist", "train")
    test_x, test_y = data.load_split("fashion_mnist", "test")
    inputs = keras.Input((28, 28, 1))
    hidden = inputs
    for filters in (32, 64):
        hidden = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(hidden)
        hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(hidden))
    base = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    base.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON report
        base.fit(x / 255.0, y, epochs=epochs, batch_size=128, verbose=2)
    out.mkdir(parents=True, exist_ok=True)
    base.save(out / "base.keras")
    accuracy = base.evaluate(test_x / 255.0, test_y, verbose=0)[1]
    print(f"plain model: test accuracy {accuracy:.4f} after {epochs} epochs", file=sys.stderr)
    command = [str(Path(sys.executable).parent / "ipguard"), "embed", "--dataset", "fashion_mnist",
               "--base-model", str(out / "base.keras"), "--out", str(out / "vault"), "--force", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    report["command"] = " ".join(["ipguard"] + command[1:])
    report["base_model_training_epochs"] = epochs
    report["base_model_keras"] = keras.__version__
    print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
