"""Authentication throughput vs bare inference, and `verify` latency (verify issue).

Targets: authentication (PNG decode + payload + MAC + registry + model + audit
log) at >= 50% of the model's bare inference rate on the same batch; `verify`
of 100 keys against a local model in under 2 s including the model load.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from keras_ipguard import Vault, authenticate
from keras_ipguard.models import WatermarkedClassifier, build_backbone, save_model
from keras_ipguard.suspects import open_suspect
from keras_ipguard.verification import verify

from .timing import interleaved_best

AUTH_TARGET_RATIO = 0.5  # verify issue: authentication >= 50% of bare inference
VERIFY_TARGET_SECONDS = 2.0  # verify issue: verify of 100 keys under 2 s with the model load


def _vault(root, shape=(28, 28, 1), keys=100, users=256):
    rng = np.random.default_rng(0)
    model = WatermarkedClassifier(build_backbone("auto", shape), 10, name="watermarked_classifier")
    vault = Vault.create(
        root / "vault", dataset="fashion_mnist", num_classes=10, input_shape=shape,
        key_images=rng.integers(0, 256, (keys,) + shape, dtype=np.uint8),
        controls={"key_source": rng.integers(0, 256, (500,) + shape, dtype=np.uint8),
                  "task": rng.integers(0, 256, (500,) + shape, dtype=np.uint8)},
        populate=lambda tmp: save_model(model, tmp / "model"),
    )
    paths = [vault.add_user(f"user{i}").path for i in range(users)]
    return vault, paths


def run():
    with tempfile.TemporaryDirectory() as root:
        vault, paths = _vault(Path(root))
        suspect = open_suspect(vault.model_path)
        batch = np.stack([np.asarray(Image.open(p))[..., None] for p in paths])
        suspect.classify(batch)  # warm up (graph tracing)
        best = interleaved_best(
            {
                "bare inference": lambda: suspect.classify(batch),
                "authenticate (PNG files)": lambda: authenticate(vault, paths, classify=suspect.classify),
                "authenticate (arrays)": lambda: authenticate(vault, list(batch), classify=suspect.classify),
            },
            repeats=5,
        )
        bare = len(batch) / best["bare inference"]
        print(f"Authentication vs bare inference, batch of {len(batch)} identity images (small CNN, CPU), best of 5:")
        for name, seconds in best.items():
            rate = len(batch) / seconds
            print(f"  {name:<26} {rate:9.0f} images/s   {rate / bare:5.2f} x bare")
        ratio = (len(batch) / best["authenticate (PNG files)"]) / bare
        verdict = "meets" if ratio >= AUTH_TARGET_RATIO else "MISSES"
        print(f"  authenticate/bare = {ratio:.2f} ({verdict} the >= {AUTH_TARGET_RATIO:.2f} target)")

        start = time.perf_counter()
        report = verify(Vault.open(vault.path))
        in_process = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "ipguard"), "verify", "--vault", str(vault.path)],
                       capture_output=True, check=False)
        cli = time.perf_counter() - start
        verdict = "meets" if in_process < VERIFY_TARGET_SECONDS else "MISSES"
        print(f"verify of {report.keys} keys (+{sum(c['images'] for c in report.chance_rates.values())} controls):")
        print(f"  in process, vault open + model load + queries {in_process:6.2f} s "
              f"({verdict} the < {VERIFY_TARGET_SECONDS:.0f} s target)")
        print(f"  `ipguard verify` command, with Python and TensorFlow start-up {cli:6.2f} s")
        return ratio, in_process
