"""Exceptions raised by keras_ipguard; each message is one line that says what to do."""


class IPGuardError(Exception):
    """Base class: bad input or state that the caller can fix (the CLI exits 2)."""


class VaultError(IPGuardError):
    """The vault is missing, incomplete, corrupt or tampered with."""


class StaleCheckpointError(IPGuardError):
    """An interrupted embed's checkpoint was made with other options: it cannot be resumed."""


class RegistryError(IPGuardError):
    """A user registry operation cannot be done (unknown user, duplicate name, ...)."""


class CapacityError(IPGuardError):
    """An image has too few pixels to carry the identity payload."""


class ImageInputError(IPGuardError):
    """An image file or array cannot be used; `reason` is a refusal code."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class Reason:
    """Codes that name why an identity image was refused (DESIGN.md, Identity images)."""

    OK = "ok"
    NOT_AN_IMAGE = "not-an-image"
    LOSSY_FORMAT = "lossy-format"
    WRONG_MODE = "wrong-mode"
    WRONG_SIZE = "wrong-size"
    TOO_LARGE = "too-large"
    NO_PAYLOAD = "no-payload"
    UNSUPPORTED_VERSION = "unsupported-version"
    BAD_MAC = "bad-mac"
    TAMPERED = "tampered"
    UNKNOWN_USER = "unknown-user"
    REVOKED = "revoked"
    MODEL_REJECTS = "model-rejects"

    EXPLANATIONS = {
        OK: "authorized",
        NOT_AN_IMAGE: "not a readable image file",
        LOSSY_FORMAT: "lossy format (JPEG/WebP re-encoding destroys the LSB payload); send the original PNG",
        WRONG_MODE: "wrong pixel mode; identity images are 8-bit grayscale or RGB PNG",
        WRONG_SIZE: "image size differs from the vault's key images",
        TOO_LARGE: "image too large to decode safely",
        NO_PAYLOAD: "no identity payload found in the image's LSBs (re-encoded, edited, or not an identity image)",
        UNSUPPORTED_VERSION: "payload format version not supported by this keras-ipguard",
        BAD_MAC: "payload signature does not verify (tampered, or issued by another vault)",
        TAMPERED: "the payload verifies but other pixels of the issued identity image were changed; send the "
                  "image as it was issued",
        UNKNOWN_USER: "payload names a user this vault's registry does not know",
        REVOKED: "the user's licence was revoked",
        MODEL_REJECTS: "the model does not classify the image as the watermark class",
    }

    @classmethod
    def explain(cls, reason):
        """One-line human explanation of a refusal code."""
        return cls.EXPLANATIONS.get(reason, reason)
