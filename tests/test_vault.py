import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ipguard import RegistryError, Vault, VaultError, authenticate

from conftest import synthetic_keys


def test_new_vault_has_the_design_layout(vault):
    names = sorted(p.name for p in vault.path.iterdir())
    assert names == ["identities", "keys", "model", "owner.key", "reports", "users.db", "vault.json"]
    key_file = vault.path / "owner.key"
    assert key_file.stat().st_size == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    config = json.loads((vault.path / "vault.json").read_text())
    assert config["format_version"] == 1
    assert config["num_classes"] == 10 and config["watermark_class"] == 10
    assert config["input_shape"] == [28, 28, 1] and config["key_count"] == 8
    manifest = json.loads((vault.path / "keys" / "manifest.json").read_text())
    assert [entry["file"] for entry in manifest["images"]] == [f"key_{i:05d}.png" for i in range(8)]
    assert sqlite3.connect(vault.path / "users.db").execute("PRAGMA user_version").fetchone()[0] == 1


def test_key_images_round_trip_losslessly(vault):
    np.testing.assert_array_equal(Vault.open(vault.path).key_images, synthetic_keys(8, (28, 28, 1)))


def test_existing_vault_is_not_overwritten_without_force(vault):
    with pytest.raises(VaultError, match="--force"):
        Vault.create(vault.path, dataset="mnist", num_classes=10, input_shape=(28, 28, 1))
    replaced = Vault.create(vault.path, dataset="mnist", num_classes=10, input_shape=(28, 28, 1), force=True)
    assert replaced.dataset == "mnist" and replaced.key_count == 0


def test_failed_creation_leaves_nothing_behind(tmp_path):
    def crash(_):
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError):
        Vault.create(tmp_path / "v", dataset="mnist", num_classes=10, input_shape=(28, 28, 1), populate=crash)
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_replacement_keeps_the_old_vault(vault):
    def crash(_):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        Vault.create(vault.path, dataset="mnist", num_classes=10, input_shape=(28, 28, 1), force=True, populate=crash)
    assert Vault.open(vault.path).dataset == "fashion_mnist"
    assert sorted(p.name for p in vault.path.parent.iterdir()) == ["vault"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "keys" / "key_00003.png").write_bytes(b"\x89PNG tampered"), "does not match its sha256"),
        (lambda p: (p / "keys" / "key_00003.png").unlink(), "is missing"),
        (lambda p: (p / "keys" / "key_99999.png").write_bytes(b"x"), "not in its manifest"),
        (lambda p: (p / "keys" / "manifest.json").write_text("{"), "manifest"),
        (lambda p: (p / "vault.json").unlink(), "no vault at"),
        (lambda p: (p / "vault.json").write_text("[1, 2"), "unreadable"),
        (lambda p: (p / "owner.key").write_bytes(b"short"), "expected 32"),
        (lambda p: os.chmod(p / "owner.key", 0o644), "chmod 600"),
        (lambda p: (p / "users.db").write_bytes(b"garbage" * 100), "corrupt"),
        (lambda p: (p / "users.db").unlink(), "users.db is missing"),
    ],
)
def test_damaged_vaults_are_refused_with_a_reason(vault, damage, message):
    damage(vault.path)
    with pytest.raises(VaultError, match=message):
        Vault.open(vault.path)


def test_users_get_key_images_round_robin(vault):
    issued = [vault.add_user(f"user{i}") for i in range(10)]
    assert [i.user.key_index for i in issued] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert [i.user.id for i in issued] == list(range(1, 11))
    assert all(i.path.is_file() for i in issued)


def test_identities_come_only_from_the_keys_the_model_answers(tmp_path):
    """embed records the keys its model answers class N (`identity_keys`); users get only those, round-robin."""
    keys = synthetic_keys(6, (28, 28, 1))
    vault = Vault.create(tmp_path / "v", dataset="fashion_mnist", num_classes=10, input_shape=(28, 28, 1),
                         key_images=keys, extra={"identity_keys": [1, 4]})
    assert vault.identity_keys == [1, 4]
    assert [vault.add_user(f"user{i}").user.key_index for i in range(5)] == [1, 4, 1, 4, 1]
    none = Vault.create(tmp_path / "none", dataset="fashion_mnist", num_classes=10, input_shape=(28, 28, 1),
                        key_images=keys, extra={"identity_keys": []})
    with pytest.raises(VaultError, match="answers class 10 on none of its keys.*more --epochs"):
        none.add_user("user0")
    assert none.users() == [] and not any(none.identities_path.iterdir())


def test_duplicate_names_are_refused_case_insensitively(vault):
    vault.add_user("alice")
    with pytest.raises(RegistryError, match="already exists"):
        vault.add_user("Alice")


def test_revoked_name_cannot_be_re_added_silently(vault):
    vault.add_user("alice")
    user, newly = vault.revoke_user("alice")
    assert newly and not user.active
    assert vault.revoke_user("alice")[1] is False
    with pytest.raises(RegistryError, match="was revoked"):
        vault.add_user("alice")


def test_revoking_an_unknown_user_is_an_error(vault):
    with pytest.raises(RegistryError, match="no user named"):
        vault.revoke_user("nobody")


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 200])
def test_bad_names_are_refused(vault, name):
    with pytest.raises(RegistryError):
        vault.add_user(name)


def test_vault_without_keys_says_to_run_embed(tmp_path):
    empty = Vault.create(tmp_path / "v", dataset="mnist", num_classes=10, input_shape=(28, 28, 1))
    with pytest.raises(VaultError, match="ipguard embed"):
        empty.add_user("alice")


def test_failed_image_write_adds_no_user(vault, tmp_path):
    with pytest.raises(OSError):
        vault.add_user("alice", out=tmp_path / "no" / "such" / "dir" / "alice.png")
    assert vault.users() == []
    assert list(vault.identities_path.iterdir()) == []


def test_audit_log_records_add_revoke_and_authenticate(vault):
    issued = vault.add_user("alice")
    vault.revoke_user("alice")
    authenticate(vault, [str(issued.path)])
    events = [(e.event, e.user_name, e.outcome, e.reason) for e in vault.registry.audit()]
    assert events == [
        ("add", "alice", "ok", None),
        ("revoke", "alice", "ok", None),
        ("authenticate", "alice", "refused", "revoked"),
    ]


def test_two_processes_adding_users_at_once_get_distinct_ids(vault):
    script = textwrap.dedent(
        """
        import sys
        from keras_ipguard import Vault
        vault = Vault.open(sys.argv[1])
        for i in range(40):
            vault.add_user(f"{sys.argv[2]}-{i}")
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(vault.path), tag], stderr=subprocess.PIPE)
        for tag in ("a", "b")
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read().decode()
    users = vault.users()
    assert len(users) == 80
    assert sorted(u.id for u in users) == list(range(1, 81))
    assert len({u.image_file for u in users}) == 80
    assert {u.name.split("-")[0] for u in users} == {"a", "b"}
    assert sqlite3.connect(vault.path / "users.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    report = authenticate(vault, sorted(str(p) for p in vault.identities_path.iterdir()), log=False)
    assert report.authorized_count == 80


def test_controls_round_trip_and_are_checked_against_the_manifest(tmp_path):
    controls = {"key_source": synthetic_keys(5, (28, 28, 1), seed=3), "task": synthetic_keys(4, (28, 28, 1), seed=4)}
    vault = Vault.create(tmp_path / "v", dataset="fashion_mnist", num_classes=10, input_shape=(28, 28, 1),
                         key_images=synthetic_keys(3, (28, 28, 1)), controls=controls)
    reopened = Vault.open(vault.path)
    for name, images in controls.items():
        np.testing.assert_array_equal(reopened.controls[name], images)
    (vault.path / "keys" / "controls.npz").write_bytes(b"PK tampered")
    with pytest.raises(VaultError, match="controls.npz does not match its sha256"):
        Vault.open(vault.path)
