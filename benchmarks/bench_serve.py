"""The licence gateway's cost: `ipguard serve` against the same app without the licence check, side by side.

Both servers are this package's Starlette app on uvicorn over the same
in-process export (small CNN, 28x28x1), each in its own process; the bare one
skips the token check, the registry look-up and the audit (`BareGateway`).
Requests alternate between the two, so both see the same machine. Latency:
one client, keep-alive, p50/p99. Throughput: 4 client threads at once.

Target (serving issue): at batch 32 the gateway keeps at least 0.8x the bare
throughput, and the licence check adds at most 1 ms at p50.

A third server marks answers (`--mark-rate 0.02`, served marks): its cost
over the plain gateway is printed beside (no target set; random images, so
about 2% of them are marked and recorded).
"""

import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REQUESTS = 300
THROUGHPUT_REQUESTS = 100  # per client thread
CLIENTS = 4


MARK_RATE = 0.02


def _serve(kind, vault_path, export_path):
    """Runs one server (in its own process) and prints its port."""
    from keras_ipguard import Vault
    from keras_ipguard.serve import Gateway, run
    from keras_ipguard.serve.backends import InProcessBackend

    class BareGateway(Gateway):
        """The same app and request handling, minus the licence check and the audit."""

        def authorise(self, header):
            return None

        def predict(self, user, images):
            return self.backend.task_probabilities(images)

    vault = Vault.open(vault_path)
    make = BareGateway if kind == "bare" else Gateway
    options = {"mark_rate": MARK_RATE} if kind == "marks" else {}
    gateway = make(vault, InProcessBackend(vault, export_path), "fm", **options)
    run(gateway, port=0, on_ready=lambda port: print(port, flush=True))


def _start(kind, vault_path, export_path):
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_serve", kind, str(vault_path),
                                str(export_path)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    return process, int(process.stdout.readline())


def _request(connection, body, token):
    connection.request("POST", "/v1/models/fm:predict", body=body,
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status


def _throughput(port, body, token):
    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(THROUGHPUT_REQUESTS):
            _request(connection, body, token)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return CLIENTS * THROUGHPUT_REQUESTS / (time.perf_counter() - start)


def run(shape=(28, 28, 1)):
    from keras_ipguard import Vault
    from keras_ipguard.models import WatermarkedClassifier, build_backbone, save_model
    from keras_ipguard.savedmodel import export
    from keras_ipguard.serve.tokens import TokenSigner

    with tempfile.TemporaryDirectory() as root:
        model = WatermarkedClassifier(build_backbone("auto", shape), 10, name="watermarked_classifier")
        vault = Vault.create(Path(root) / "vault", dataset="fashion_mnist", num_classes=10, input_shape=shape,
                             key_images=np.zeros((1,) + shape, np.uint8),
                             populate=lambda tmp: save_model(model, tmp / "model"))
        user = vault.add_user("bench").user
        token = TokenSigner(vault.owner_key()).issue(user.id, user.name)  # what POST /v1/licences returns
        saved = export(vault, Path(root) / "serving").path
        servers = {kind: _start(kind, vault.path, saved) for kind in ("gate", "bare", "marks")}
        try:
            print("Licence gateway vs the same app without the licence check (uvicorn, in-process SavedModel, CPU):")
            print(f"  {'batch':>5}  {'gate p50/p99 ms':>16}  {'bare p50/p99 ms':>16}  {'p50 added':>9}  "
                  f"{'gate req/s':>10}  {'bare req/s':>10}  {'ratio':>5}  {'marks p50 added':>15}  "
                  f"{'marks/gate req/s':>16}")
            for batch in (1, 32):
                images = np.random.default_rng(batch).integers(0, 256, (batch,) + shape, dtype=np.uint8)
                body = json.dumps({"instances": images.tolist()})
                connections = {kind: http.client.HTTPConnection("127.0.0.1", port)
                               for kind, (_, port) in servers.items()}
                times = {kind: [] for kind in servers}
                for _ in range(REQUESTS):
                    for kind, connection in connections.items():
                        start = time.perf_counter()
                        _request(connection, body, token)
                        times[kind].append(1000 * (time.perf_counter() - start))
                rates = {kind: [] for kind in servers}
                for _ in range(3):  # alternating rounds, best of 3
                    for kind, (_, port) in servers.items():
                        rates[kind].append(_throughput(port, body, token))
                p = {kind: np.percentile(values[10:], [50, 99]) for kind, values in times.items()}  # 10 warm-ups
                rate = {kind: max(values) for kind, values in rates.items()}
                print(f"  {batch:>5}  {p['gate'][0]:>7.2f}/{p['gate'][1]:<8.2f}  {p['bare'][0]:>7.2f}/"
                      f"{p['bare'][1]:<8.2f}  {p['gate'][0] - p['bare'][0]:>9.2f}  {rate['gate']:>10.0f}  "
                      f"{rate['bare']:>10.0f}  {rate['gate'] / rate['bare']:>5.2f}  "
                      f"{p['marks'][0] - p['gate'][0]:>15.2f}  {rate['marks'] / rate['gate']:>16.2f}")
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        _serve(*sys.argv[1:])
    else:
        run()
