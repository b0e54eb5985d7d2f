"""`verify` of a vault against its own model and innocent suspects, printed as a table (verify issue).

    python benchmarks/verify_innocents.py VAULT NAME=MODEL_PATH ...

A randomly initialised model of the vault's architecture is always added.
"""

import json
import sys
import tempfile
from pathlib import Path

from keras_ipguard import Vault
from keras_ipguard.models import WatermarkedClassifier, build_backbone, save_model
from keras_ipguard.verify import verify


def main(vault_path, *named):
    vault = Vault.open(vault_path)
    suspects = {"the vault's own model": vault.model_path}
    suspects.update(dict(item.split("=", 1) for item in named))
    with tempfile.TemporaryDirectory() as root:
        random_model = WatermarkedClassifier(build_backbone("auto", vault.input_shape), vault.num_classes)
        save_model(random_model, Path(root))
        suspects["randomly initialised"] = root
        rows = {}
        for name, path in suspects.items():
            report = verify(vault, path)
            rows[name] = {k: report.to_dict()[k] for k in ("owned", "watermark_accuracy", "chance_rate", "p_value", "verdict")}
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
