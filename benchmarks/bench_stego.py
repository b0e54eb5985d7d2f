"""LSB embed/extract throughput next to a plain numpy copy of the same bytes (foundation issue).

Target: extraction at >= 25% of the copy's throughput.
"""

import os

import numpy as np

from keras_ipguard import IdentityCodec, Payload, stego
from keras_ipguard.identity import PAYLOAD_BITS

from .timing import interleaved_best

EXTRACT_TARGET_RATIO = 0.25  # foundation issue: extract >= 25% of a numpy copy


def run(count=100_000, shape=(28, 28, 1)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count,) + shape, dtype=np.uint8)
    plane_bits = rng.integers(0, 2, (count, int(np.prod(shape))), dtype=np.uint8)
    payload_bits = plane_bits[:, :PAYLOAD_BITS]
    codec = IdentityCodec(os.urandom(32))
    order = codec.order(shape)
    megabytes = images.nbytes / 1e6
    best = interleaved_best(
        {
            "numpy copy": images.copy,
            "LSB extract (bit-plane)": lambda: stego.lsb_plane(images, batch=True),
            "LSB extract (keyed order)": lambda: stego.extract_bits(images, order, PAYLOAD_BITS, batch=True),
            "LSB embed (full plane)": lambda: stego.embed_bits(images, plane_bits),
            "LSB embed (keyed order)": lambda: stego.embed_bits(images, payload_bits, order),
        }
    )
    copy_rate = megabytes / best["numpy copy"]
    print(f"LSB stego on {count} images of {'x'.join(map(str, shape))} ({megabytes:.1f} MB), best of 7:")
    for name, seconds in best.items():
        rate = megabytes / seconds
        print(f"  {name:<28} {rate:9.1f} MB/s   {rate / copy_rate:6.2f} x copy")
    ratio = (megabytes / best["LSB extract (bit-plane)"]) / copy_rate
    verdict = "meets" if ratio >= EXTRACT_TARGET_RATIO else "MISSES"
    print(f"  extract/copy = {ratio:.2f} ({verdict} the >= {EXTRACT_TARGET_RATIO:.2f} target)")

    key = images[0]
    genuine = np.stack([codec.encode(key, Payload(i, 0, 1)) for i in range(2000)])
    timing = interleaved_best(
        {
            "identity encode": lambda: [codec.encode(key, Payload(i, 0, 1)) for i in range(2000)],
            "identity decode + MAC": lambda: codec.decode_batch(genuine),
        },
        repeats=3,
    )
    for name, seconds in timing.items():
        print(f"  {name:<28} {2000 / seconds:9.0f} images/s")
    return ratio
