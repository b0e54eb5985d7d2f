"""The owner's vault: one directory holding the secret, keys, registry, model and reports.

Layout (DESIGN.md)::

    VAULT/
      vault.json     format version, dataset, num_classes N, watermark class, input shape, key code, ...
      owner.key      32 random bytes, mode 0600
      keys/          K key images (lossless PNG) + manifest.json (sha256 of each)
      users.db       SQLite user registry, audit log and served marks
      model/         the watermarked model
      identities/    issued identity images (PNG)
      reports/       JSON results and plots

Example:

>>> import numpy as np, tempfile, os
>>> from keras_ipguard import Vault
>>> keys = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
>>> vault = Vault.create(os.path.join(tempfile.mkdtemp(), "v"), dataset="fashion_mnist",
...                      num_classes=10, input_shape=(28, 28, 1), key_images=keys)
>>> issued = vault.add_user("alice")
>>> issued.user.key_index
0
"""

import datetime
import hashlib
import io
import json
import os
import platform
import re
from pathlib import Path

import numpy as np

from . import atomic, images
from ._version import __version__
from .errors import IPGuardError, VaultError
from .identity import IdentityCodec, Payload
from .registry import UserRegistry

VAULT_FORMAT_VERSION = 1
OWNER_KEY_BYTES = 32
CONFIG_FILE = "vault.json"
OWNER_KEY_FILE = "owner.key"
KEYS_DIR = "keys"
MANIFEST_FILE = "manifest.json"
CONTROLS_FILE = "controls.npz"
LABELS_SUFFIX = ".labels"  # controls.npz entry of a control set's hit labels
USERS_DB = "users.db"
MODEL_DIR = "model"
IDENTITIES_DIR = "identities"
REPORTS_DIR = "reports"
_REQUIRED_CONFIG = ("format_version", "dataset", "num_classes", "watermark_class", "input_shape")


class IssuedIdentity:
    """A newly added user and the path of their identity image."""

    def __init__(self, user, path):
        self.user = user
        self.path = path

    def to_dict(self):
        return {**self.user.to_dict(), "identity_image": str(self.path)}


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _library_versions():
    versions = {"keras_ipguard": __version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        from importlib.metadata import version  # pylint: disable=import-outside-toplevel

        for package in ("tensorflow", "tf-keras", "tensorflow-datasets", "tensorflow-model-optimization"):
            versions[package] = version(package)
    except Exception:  # pylint: disable=broad-except
        pass  # metadata is informative only
    return versions


class Vault:
    """An opened, validated vault directory. Create with `Vault.create`, open with `Vault.open`."""

    def __init__(self, path, config, key_images, controls=None, control_labels=None):
        self.path = Path(path)
        self.config = config
        self._key_images = key_images
        self._controls = controls or {}
        self._control_labels = control_labels or {}
        self.registry = UserRegistry(self.path / USERS_DB)

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(
        cls,
        path,
        *,
        dataset,
        num_classes,
        input_shape,
        key_images=None,
        key_source=None,
        architecture=None,
        seed=None,
        extra=None,
        controls=None,
        populate=None,
        owner_key=None,
        force=False,
    ):
        """Creates a new vault atomically and returns it opened.

        Args:
            path: directory to create; must not exist (or be empty) unless `force`.
            dataset: tfds name of the task's dataset.
            num_classes: N, the number of task classes; the watermark class is N.
            input_shape: (H, W, C) of the model's input.
            key_images: uint8 array (K, H, W, C) of key images, or None (a vault
                without keys cannot issue identities until `ipguard embed` runs).
            key_source, architecture, seed: recorded in vault.json.
            controls: dict of uint8 image arrays that are not keys (held-out
                key-source images, clean test images), stored in keys/controls.npz
                for verification's chance rate; a value may also be a pair
                (images, labels) when the hit label is not the watermark class.
            extra: more JSON-serialisable fields for vault.json.
            populate: callable(tmp_path) that writes more content (the model,
                reports) before the vault is moved into place.
            owner_key: the 32-byte owner secret; fresh random bytes when None.
            force: replace an existing vault at `path`.
        """
        path = Path(path)
        occupied = any(path.iterdir()) if path.is_dir() else path.exists()
        if occupied and not force:
            raise VaultError(f"{path} already exists and is not empty; choose another path or pass --force")
        input_shape = tuple(int(d) for d in input_shape)
        config = {
            "format_version": VAULT_FORMAT_VERSION,
            "dataset": dataset,
            "num_classes": int(num_classes),
            "watermark_class": int(num_classes),
            "input_shape": list(input_shape),
            "architecture": architecture,
            "key_source": key_source,
            "key_count": 0 if key_images is None else int(len(key_images)),
            "seed": seed,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "library_versions": _library_versions(),
            **(extra or {}),
        }
        with atomic.new_directory(path, replace=force) as tmp:
            for sub in (KEYS_DIR, MODEL_DIR, IDENTITIES_DIR, REPORTS_DIR):
                (tmp / sub).mkdir()
            owner_key = os.urandom(OWNER_KEY_BYTES) if owner_key is None else bytes(owner_key)
            if len(owner_key) != OWNER_KEY_BYTES:
                raise VaultError(f"owner key must be {OWNER_KEY_BYTES} bytes, got {len(owner_key)}")
            atomic.write_bytes(tmp / OWNER_KEY_FILE, owner_key, mode=0o600)
            _write_keys(tmp / KEYS_DIR, key_images, input_shape, controls)
            UserRegistry(tmp / USERS_DB).create()
            atomic.write_json(tmp / CONFIG_FILE, config)
            if populate is not None:
                populate(tmp)
        return cls.open(path)

    @classmethod
    def open(cls, path):
        """Opens and validates a vault; raises VaultError naming what is wrong."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise VaultError(f"no vault at {path} (no {CONFIG_FILE}); create one with `ipguard embed --out {path}`")
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as error:
            raise VaultError(f"{path / CONFIG_FILE} is unreadable ({error}); restore it from a backup") from None
        missing = [key for key in _REQUIRED_CONFIG if key not in config]
        if missing:
            raise VaultError(f"{path / CONFIG_FILE} lacks {', '.join(missing)}; restore it from a backup")
        if config["format_version"] > VAULT_FORMAT_VERSION:
            raise VaultError(
                f"vault format {config['format_version']} is newer than this keras-ipguard reads "
                f"({VAULT_FORMAT_VERSION}); upgrade keras-ipguard"
            )
        _check_owner_key(path / OWNER_KEY_FILE)
        key_images, controls, control_labels = _read_keys(path / KEYS_DIR, tuple(config["input_shape"]))
        vault = cls(path, config, key_images, controls, control_labels)
        if not vault.registry.path.is_file():
            raise VaultError(f"{vault.registry.path} is missing; restore it from a backup")
        vault.registry.check()
        return vault

    # ------------------------------------------------------------------ properties

    @property
    def num_classes(self):
        return self.config["num_classes"]

    @property
    def watermark_class(self):
        return self.config["watermark_class"]

    @property
    def has_watermark_class(self):
        """Whether keys answer a class of their own, N (else they carry task labels and no identity can be issued)."""
        return self.watermark_class is not None

    @property
    def key_labels(self):
        """int array (K,): the label each key must get (class N for the extra-class scheme)."""
        labels = self.config.get("key_labels")
        return np.full(self.key_count, self.watermark_class) if labels is None else np.asarray(labels)

    @property
    def key_codes(self):
        """int array (K,): each key's secret task class (the hidden key code), or None where none was trained."""
        codes = self.config.get("key_code")
        return None if codes is None else np.asarray(codes["keys"])

    @property
    def key_codes_selected(self):
        """Whether the keys are the survivors of more trained keys (`survival`): their codes were kept for how
        models of the task answer them, so they are not a uniform draw any more (older vaults: a key source's
        dropped keys tell)."""
        codes = self.config.get("key_code") or {}
        return bool(codes.get("selected_from") or (self.config.get("key_source_indices") or {}).get(
            "trained_keys_dropped"))

    @property
    def identity_keys(self):
        """The indices of the keys identity images are made from: those the vault's model answered with their label
        when `embed` wrote it (a key it misses would make identity images it refuses); all keys where not recorded."""
        recorded = self.config.get("identity_keys")
        return list(range(self.key_count)) if recorded is None else [int(i) for i in recorded]

    def control_codes(self, name):
        """int array: the secret task classes drawn, never trained, for control set `name` (None: no key code)."""
        codes = self.config.get("key_code")
        return None if codes is None else np.asarray(codes["controls"][name])

    def control_labels(self, name):
        """int array: the hit label of each image of control set `name`."""
        labels = self._control_labels.get(name)
        return np.full(len(self._controls[name]), self.watermark_class) if labels is None else labels

    @property
    def input_shape(self):
        return tuple(self.config["input_shape"])

    @property
    def dataset(self):
        return self.config["dataset"]

    @property
    def key_images(self):
        """uint8 array (K, H, W, C) of the key images (read-only)."""
        return self._key_images

    @property
    def controls(self):
        """Dict of uint8 non-key image arrays stored for verification (may be empty)."""
        return self._controls

    @property
    def key_count(self):
        return len(self._key_images)

    @property
    def model_path(self):
        return self.path / MODEL_DIR

    @property
    def has_model(self):
        return any(self.model_path.iterdir()) if self.model_path.is_dir() else False

    @property
    def reports_path(self):
        return self.path / REPORTS_DIR

    @property
    def identities_path(self):
        return self.path / IDENTITIES_DIR

    def owner_key(self):
        """The owner secret (`owner.key`): never to leave the vault."""
        return (self.path / OWNER_KEY_FILE).read_bytes()

    def codec(self):
        """The `IdentityCodec` keyed with this vault's owner secret."""
        return IdentityCodec(self.owner_key())

    # ------------------------------------------------------------------ users

    def add_user(self, name, out=None):
        """Registers `name` and issues their identity image; returns an `IssuedIdentity`.

        Args:
            name: the user's name.
            out: optional extra path for a copy of the identity image (the file
                to hand to the user); written before the registry commits.
        """
        if self.key_count == 0:
            raise VaultError(f"vault {self.path} has no key images yet; run `ipguard embed --out {self.path}` first")
        if not self.has_watermark_class:
            raise VaultError(f"vault {self.path} has no watermark class, so no identity image can be issued (its model "
                             "cannot tell one apart); embed with --scheme extra-class to license users")
        keys = self.identity_keys
        if not keys:
            raise VaultError(f"vault {self.path}: its model answers class {self.watermark_class} on none of its "
                             "keys, so any identity image would be refused; embed again with more --epochs")
        codec = self.codec()
        written = []

        def issue(user_id, key_index, issued_at):
            image = codec.encode(self._key_images[key_index], Payload(user_id, key_index, issued_at))
            file_name = f"{user_id:06d}-{_safe(name)}.png"
            targets = [self.identities_path / file_name] + ([Path(out)] if out else [])
            for target in targets:
                data = images.write_png(target, image)
                written.append(target)
            return file_name, _sha256(data)

        try:
            user = self.registry.add(name, keys, issue)
        except BaseException:
            for target in written:
                target.unlink(missing_ok=True)
            raise
        return IssuedIdentity(user, self.identities_path / user.image_file)

    def revoke_user(self, name):
        """Revokes `name`; returns (user, newly_revoked)."""
        return self.registry.revoke(name)

    def users(self):
        return self.registry.users()

    # ------------------------------------------------------------------ reports

    def write_report(self, name, obj):
        """Atomically writes `reports/<name>.json`; returns its path."""
        path = self.reports_path / f"{name}.json"
        atomic.write_json(path, obj)
        return path


def _safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40].strip("._") or "user"


def _write_keys(keys_dir, key_images, input_shape, controls=None):
    entries = []
    if key_images is not None:
        key_images = _checked_images(key_images, input_shape, "key images")
        for index, image in enumerate(key_images):
            file_name = f"key_{index:05d}.png"
            data = images.write_png(keys_dir / file_name, image)
            entries.append({"index": index, "file": file_name, "sha256": _sha256(data)})
    manifest = {"format_version": 1, "count": len(entries), "shape": list(input_shape), "images": entries}
    if controls:
        buffer = io.BytesIO()
        arrays = {}
        for name, value in controls.items():
            images_, labels = value if isinstance(value, tuple) else (value, None)
            arrays[name] = _checked_images(images_, input_shape, name)
            if labels is not None:
                arrays[name + LABELS_SUFFIX] = np.asarray(labels, np.int64).reshape(len(images_))
        np.savez_compressed(buffer, **arrays)
        atomic.write_bytes(keys_dir / CONTROLS_FILE, buffer.getvalue())
        manifest["controls"] = {
            "file": CONTROLS_FILE,
            "sha256": _sha256(buffer.getvalue()),
            "counts": {name: int(len(a)) for name, a in arrays.items() if not name.endswith(LABELS_SUFFIX)},
        }
    atomic.write_json(keys_dir / MANIFEST_FILE, manifest)


def _checked_images(array, input_shape, what):
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.shape[1:] != input_shape:
        raise IPGuardError(
            f"{what} must be uint8 of shape (K, {', '.join(map(str, input_shape))}), got {array.dtype} {array.shape}"
        )
    return array


def _read_keys(keys_dir, input_shape):
    """Returns (key images, controls dict, control labels dict), verified against the manifest's sha256s."""
    manifest_path = keys_dir / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise VaultError(f"key manifest {manifest_path} is missing or unreadable ({error}); "
                         "restore it from a backup") from None
    listed = {entry["file"] for entry in entries}
    unlisted = sorted(p.name for p in keys_dir.glob("*.png") if p.name not in listed)
    if unlisted:
        raise VaultError(f"{keys_dir} holds key files not in its manifest ({', '.join(unlisted[:3])}); "
                         "the vault was tampered with")
    keys = np.zeros((len(entries),) + input_shape, np.uint8)
    if sorted(entry.get("index") for entry in entries) != list(range(len(entries))):
        raise VaultError(f"key manifest {manifest_path} has bad indices; restore it from a backup")
    for entry in entries:
        data = _verified_bytes(keys_dir / entry["file"], entry["sha256"])
        keys[entry["index"]] = images.read_image(io.BytesIO(data), input_shape)
    controls, labels = {}, {}
    if "controls" in manifest:
        data = _verified_bytes(keys_dir / manifest["controls"]["file"], manifest["controls"]["sha256"])
        with np.load(io.BytesIO(data)) as archive:
            for name in archive.files:
                if name.endswith(LABELS_SUFFIX):
                    labels[name[: -len(LABELS_SUFFIX)]] = archive[name]
                else:
                    controls[name] = archive[name]
    return keys, controls, labels


def _verified_bytes(path, sha256):
    try:
        data = path.read_bytes()
    except OSError:
        raise VaultError(f"{path} is missing; restore the vault from a backup") from None
    if _sha256(data) != sha256:
        raise VaultError(f"{path} does not match its sha256 in the manifest; the vault was tampered with")
    return data


def _check_owner_key(path):
    try:
        stat = path.stat()
        size = stat.st_size
    except OSError:
        raise VaultError(f"{path} is missing; without the owner secret no identity can be issued or checked") from None
    if size != OWNER_KEY_BYTES:
        raise VaultError(f"{path} holds {size} bytes, expected {OWNER_KEY_BYTES}; restore it from a backup")
    if stat.st_mode & 0o077:
        raise VaultError(f"{path} is readable by other users (mode {stat.st_mode & 0o777:o}); run `chmod 600 {path}`")
