"""Signed identity payloads hidden in the LSBs of key images.

An identity image is a vault key image whose LSB plane carries, at positions in
an order derived from the owner secret:

    nonce (8 bytes) | E(magic, version, user_id, key_index, issued_at) (17 bytes) | MAC (32 bytes)

E is a keystream cipher keyed with the secret and the nonce; the MAC is the
full HMAC-SHA256, keyed with a subkey of the secret, over the nonce, the
ciphertext, the image shape and a hash of the image's 7 high bits (so the
payload cannot be moved to another image). Every remaining LSB is a filler
bit from a keystream of the secret, the nonce and the MAC: it looks random,
but decoding recomputes it, so a change to any bit of any pixel of an issued
image is refused (`bad-mac` or `no-payload` in the payload's bits, `bad-mac`
in the high bits, `tampered` in a filler bit). The whole LSB plane is indistinguishable from
the random LSB patterns the model is trained on, and without the secret a
payload can be neither read nor forged. 456 bits in all: fits a 28x28
grayscale image (784 bits).

Payloads of format version 1 (issued before the filler was derived) had
random filler bits; they still decode, without the filler check: re-issue
them (`ipguard users revoke`, then `users add` under a new name) for tamper
evidence.

Example:

>>> import os, numpy as np
>>> from keras_ipguard.identity import IdentityCodec, Payload
>>> codec = IdentityCodec(os.urandom(32))
>>> key = np.full((28, 28, 1), 128, np.uint8)
>>> image = codec.encode(key, Payload(user_id=7, key_index=0, issued_at=1_700_000_000))
>>> codec.decode(image).payload.user_id
7
"""

import dataclasses
import hashlib
import hmac
import os
import struct

import numpy as np

from . import stego
from .errors import CapacityError, ImageInputError, Reason

PAYLOAD_FORMAT_VERSION = 2
# Version 1: the same payload with random filler bits (no tamper evidence outside the payload).
SUPPORTED_VERSIONS = (1, 2)
MIN_SECRET_BYTES = 16
_MAGIC = b"IG"
_NONCE_BYTES = 8
_FIELDS = struct.Struct(">2sBIHQ")  # magic, version, user_id, key_index, issued_at
_MAC_BYTES = 32  # full HMAC-SHA256; DESIGN.md asks for at least 16
PAYLOAD_BYTES = _NONCE_BYTES + _FIELDS.size + _MAC_BYTES
PAYLOAD_BITS = 8 * PAYLOAD_BYTES

_MAX_USER_ID = 2**32 - 1
_MAX_KEY_INDEX = 2**16 - 1
_MAX_ISSUED_AT = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class Payload:
    """What an identity image says about its holder.

    Args:
        user_id: registry id of the user (0 .. 2**32-1).
        key_index: which vault key image carries the payload (0 .. 65535).
        issued_at: issue time, Unix seconds.
        version: payload format version.
    """

    user_id: int
    key_index: int
    issued_at: int
    version: int = PAYLOAD_FORMAT_VERSION

    def __post_init__(self):
        for name, top in (("user_id", _MAX_USER_ID), ("key_index", _MAX_KEY_INDEX), ("issued_at", _MAX_ISSUED_AT)):
            value = getattr(self, name)
            if not 0 <= int(value) <= top:
                raise ValueError(f"`{name}` must be in 0..{top}, got {value}")

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Result of decoding one image: the payload, or None and the refusal reason."""

    payload: Payload | None
    reason: str

    @property
    def ok(self):
        return self.reason == Reason.OK


def _bits_to_bytes(bits):
    return np.packbits(bits, axis=-1)


def _bytes_to_bits(data):
    return np.unpackbits(np.frombuffer(data, np.uint8))


def _xor(data, stream):
    return bytes(a ^ b for a, b in zip(data, stream))


class IdentityCodec:
    """Encodes and decodes signed identity payloads with one owner secret.

    Args:
        secret: the owner secret (`owner.key`, 32 random bytes).
    """

    def __init__(self, secret):
        secret = bytes(secret)
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"owner secret must have at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
        # Independent subkeys for the four uses of the secret.
        self._mac_key = hmac.digest(secret, b"ipguard/v1/mac", "sha256")
        self._fill_key = hmac.digest(secret, b"ipguard/v2/filler", "sha256")
        self._enc_key = hmac.digest(secret, b"ipguard/v1/encrypt", "sha256")
        self._order_key = hmac.digest(secret, b"ipguard/v1/order", "sha256")
        self._orders = {}  # image shape -> order, computed once per codec

    def order(self, image_shape):
        """The secret order of flat LSB positions used for images of `image_shape`."""
        image_shape = tuple(image_shape)
        if image_shape not in self._orders:
            n = stego.capacity(image_shape)
            shape_tag = "x".join(map(str, image_shape)).encode()
            stream = hashlib.shake_256(self._order_key + shape_tag).digest(8 * n)
            self._orders[image_shape] = np.argsort(np.frombuffer(stream, ">u8"), kind="stable")
        return self._orders[image_shape]

    def _check_capacity(self, image_shape):
        have = stego.capacity(image_shape)
        if have < PAYLOAD_BITS:
            raise CapacityError(
                f"a {'x'.join(map(str, image_shape))} image holds {have} payload bits at 1 bit per "
                f"value; the identity payload needs {PAYLOAD_BITS}"
            )

    def _keystream(self, nonce, n):
        return hashlib.shake_256(self._enc_key + nonce).digest(n)

    def _mac(self, image_shape, cover, nonce, ciphertext):
        header = struct.pack(">B", len(image_shape)) + struct.pack(f">{len(image_shape)}I", *image_shape)
        cover_digest = hashlib.sha256(cover.tobytes()).digest()
        return hmac.digest(self._mac_key, header + cover_digest + nonce + ciphertext, "sha256")

    def encode(self, image, payload, nonce=None):
        """Returns a copy of `image` carrying `payload` in its LSBs.

        Args:
            image: uint8 key image (HxW, HxWx1 or HxWx3).
            payload: a `Payload`.
            nonce: 8 bytes; random when None (tests pass one for reproducibility).

        Raises:
            CapacityError: the image has fewer values than `PAYLOAD_BITS`.
        """
        image = np.asarray(image)
        shape = stego.check_image_shape(image.shape)
        self._check_capacity(shape)
        nonce = os.urandom(_NONCE_BYTES) if nonce is None else bytes(nonce)
        if len(nonce) != _NONCE_BYTES:
            raise ValueError(f"nonce must be {_NONCE_BYTES} bytes, got {len(nonce)}")
        fields = _FIELDS.pack(_MAGIC, payload.version, payload.user_id, payload.key_index, payload.issued_at)
        ciphertext = _xor(fields, self._keystream(nonce, len(fields)))
        cover = stego.high_bits(image)
        mac = self._mac(shape, cover, nonce, ciphertext)
        return stego.embed_bits(image, self._plane(shape, nonce + ciphertext + mac))

    def _plane(self, shape, message):
        """The whole LSB plane of an image carrying `message`: its bits at the secret positions, and at every
        other position a filler bit of the keystream of (nonce, MAC), which looks uniform and is recomputable."""
        n = stego.capacity(shape)
        nonce, mac = message[:_NONCE_BYTES], message[-_MAC_BYTES:]
        plane = _bytes_to_bits(hashlib.shake_256(self._fill_key + nonce + mac).digest((n + 7) // 8))[:n]
        plane[self.order(shape)[:PAYLOAD_BITS]] = _bytes_to_bits(message)
        return plane

    def decode(self, image):
        """Decodes one image; never raises on bad content, returns a `Decoded` with a reason."""
        return self.decode_batch(np.asarray(image)[None])[0] if _is_uint8_array(image) else _refusal(image)

    def decode_batch(self, images):
        """Decodes a batch (B, H, W[, C]) of same-shaped uint8 images; returns a list of `Decoded`."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim < 3:
            reason = Reason.WRONG_MODE if images.dtype != np.uint8 else Reason.WRONG_SIZE
            return [Decoded(None, reason)] * (len(images) if images.ndim else 1)
        try:
            shape = stego.check_image_shape(images.shape[1:])
        except ImageInputError as error:
            return [Decoded(None, error.reason)] * len(images)
        if stego.capacity(shape) < PAYLOAD_BITS:
            return [Decoded(None, Reason.WRONG_SIZE)] * len(images)
        bits = stego.extract_bits(images, self.order(shape), PAYLOAD_BITS, batch=True)
        messages = _bits_to_bytes(bits)
        covers = stego.high_bits(images)
        planes = stego.lsb_plane(images, batch=True)
        return [self._decode_message(shape, cover, message.tobytes(), plane)
                for cover, message, plane in zip(covers, messages, planes)]

    def _decode_message(self, shape, cover, message, plane):
        nonce, ciphertext = message[:_NONCE_BYTES], message[_NONCE_BYTES : _NONCE_BYTES + _FIELDS.size]
        mac = message[_NONCE_BYTES + _FIELDS.size :]
        magic, version, user_id, key_index, issued_at = _FIELDS.unpack(
            _xor(ciphertext, self._keystream(nonce, _FIELDS.size))
        )
        if magic != _MAGIC:
            return Decoded(None, Reason.NO_PAYLOAD)
        if not hmac.compare_digest(mac, self._mac(shape, cover, nonce, ciphertext)):
            return Decoded(None, Reason.BAD_MAC)
        if version not in SUPPORTED_VERSIONS:
            return Decoded(None, Reason.UNSUPPORTED_VERSION)
        if version >= 2 and not hmac.compare_digest(np.packbits(self._plane(shape, message)).tobytes(),
                                                     np.packbits(plane).tobytes()):
            return Decoded(None, Reason.TAMPERED)
        return Decoded(Payload(user_id, key_index, issued_at, version), Reason.OK)


def _is_uint8_array(image):
    return isinstance(image, np.ndarray) and image.dtype == np.uint8


def _refusal(image):
    return Decoded(None, Reason.WRONG_MODE if isinstance(image, np.ndarray) else Reason.NOT_AN_IMAGE)
