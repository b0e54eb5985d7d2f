"""Measures `ipguard embed` on a 64x64 image-folder task (data issue's acceptance figure).

The task: CIFAR-10's training images upscaled to 64x64 PNG in class folders
(runs/bench-folders/, written once by bench_folder); without test/, embed holds
20% of each class out. The keys: CIFAR-100's images upscaled the same way, in a
folder of the owner's own. `--arch auto` picks ResNet-20 after a stride-2 stem.

    python benchmarks/embed_image_folder.py --epochs 10 --max-train-examples 15000
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_folder import ROOT, write_folder  # noqa: E402  (after the path set-up)


def key_folder(data_dir=None):
    """CIFAR-100's train images (2,000 in ../shared) upscaled to 64x64 PNG: the owner's key folder."""
    target = ROOT / "cifar100-64-keys"
    if (target / ".complete").is_file():
        return target
    import numpy as np
    from PIL import Image

    from keras_ipguard import data

    target.mkdir(parents=True, exist_ok=True)
    images, _ = data.load_split("cifar100", "train", data_dir)
    for index, image in enumerate(images):
        Image.fromarray(np.asarray(image)).resize((64, 64), Image.BICUBIC).save(target / f"{index:05d}.png")
    (target / ".complete").write_text("")
    return target


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/folder-64"), show_default=True)
@click.option("--epochs", default=10, show_default=True)
@click.option("--max-train-examples", default=15000, show_default=True)
@click.option("--max-test-examples", default=2000, show_default=True)
def main(out, epochs, max_train_examples, max_test_examples):
    task, keys = write_folder(50_000), key_folder()
    command = [str(Path(sys.executable).parent / "ipguard"), "embed", "--dataset", str(task), "--key-source", str(keys),
               "--epochs", str(epochs), "--max-train-examples", str(max_train_examples), "--max-test-examples",
               str(max_test_examples), "--baseline", "--out", str(out), "--force", "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    report = json.loads(result.stdout)
    report["command"] = " ".join(["ipguard"] + command[1:])
    print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
