"""keras-ipguard: active IP protection for Keras classifiers.

An extra output class learnt from secret key images proves ownership of a
model; per-user identity images (key images with a signed payload in their
LSBs) authenticate licensed users.

Importing this package routes TensorFlow to tf_keras (Keras 2) and imports no
TensorFlow: the public names that need it (`embed`, `verify`, `export`, ...)
load on first use.

Example:

    import keras_ipguard as ipg
    result = ipg.embed("fm-vault", ipg.EmbedOptions(dataset="fashion_mnist"))
    vault = ipg.Vault.open("fm-vault")
    print(ipg.verify(vault).verdict)
"""

import importlib

from . import backend  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ._version import __version__
from .authentication import AuthReport, AuthResult, authenticate
from .errors import CapacityError, ImageInputError, IPGuardError, Reason, RegistryError, VaultError
from .identity import Decoded, IdentityCodec, Payload
from .registry import User, UserRegistry
from .vault import IssuedIdentity, Vault

# Public names loaded on first use: {name: (module, attribute or None for the module itself)}.
_LAZY = {
    "embed": ("embedding", "embed"),
    "EmbedOptions": ("embed_options", "EmbedOptions"),
    "EmbedResult": ("embedding", "EmbedResult"),
    "verify": ("verification", "verify"),
    "OwnershipReport": ("verification", "OwnershipReport"),
    "export": ("savedmodel", "export"),
    "schemes": ("schemes", None),
    "attacks": ("attacks", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    return module if attribute is None else getattr(module, attribute)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AuthReport",
    "AuthResult",
    "CapacityError",
    "Decoded",
    "EmbedOptions",
    "EmbedResult",
    "IPGuardError",
    "IdentityCodec",
    "ImageInputError",
    "IssuedIdentity",
    "OwnershipReport",
    "Payload",
    "Reason",
    "RegistryError",
    "User",
    "UserRegistry",
    "Vault",
    "VaultError",
    "__version__",
    "attacks",
    "authenticate",
    "embed",
    "export",
    "schemes",
    "verify",
]
