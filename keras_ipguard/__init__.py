"""keras-ipguard: active IP protection for Keras classifiers.

An extra output class learnt from secret key images proves ownership of a
model; per-user identity images (key images with a signed payload in their
LSBs) authenticate licensed users.

Importing this package routes TensorFlow to tf_keras (Keras 2); TensorFlow
itself is imported only by the parts that need it.
"""

from . import backend  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ._version import __version__
from .errors import CapacityError, IPGuardError, ImageInputError, Reason, RegistryError, VaultError
from .identity import Decoded, IdentityCodec, Payload
from .registry import User, UserRegistry
from .vault import IssuedIdentity, Vault
from .verify import AuthReport, AuthResult, authenticate

__all__ = [
    "AuthReport",
    "AuthResult",
    "CapacityError",
    "Decoded",
    "IPGuardError",
    "IdentityCodec",
    "ImageInputError",
    "IssuedIdentity",
    "Payload",
    "Reason",
    "RegistryError",
    "User",
    "UserRegistry",
    "Vault",
    "VaultError",
    "__version__",
    "authenticate",
]
