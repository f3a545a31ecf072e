"""Pseudonymisation: the key formula, secret files, and keeping the secret out of a store."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import stat
from pathlib import Path

import pytest

from radengine.data.privacy import (
    KEY_HEX_CHARS,
    SECRET_ENV,
    Pseudonymizer,
    default_secret_path,
    ensure_outside,
    load_or_create_secret,
    read_secret,
)

SECRET = b"0123456789abcdef0123456789abcdef"


def test_key_is_truncated_hmac_sha256_of_kind_nul_value() -> None:
    pseudo = Pseudonymizer(SECRET)
    expected = hmac.new(SECRET, b"patient\x00SYNTH-ID-0001", hashlib.sha256).hexdigest()[:16]
    assert pseudo.key("patient", "SYNTH-ID-0001") == expected
    assert KEY_HEX_CHARS == 16
    key = pseudo.key("series", "1.2.3")
    assert len(key) == 16 and key == key.lower() and int(key, 16) >= 0


def test_keys_are_stable_separated_by_kind_and_secret() -> None:
    a, b = Pseudonymizer(SECRET), Pseudonymizer(bytes(SECRET))
    assert a.key("patient", "X") == b.key("patient", "X")
    assert a.key("patient", "X") != a.key("study", "X")
    assert a.key("patient", "X") != a.key("patient", "Y")
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert a.key("ab", "c") != a.key("a", "bc")
    assert a.key("patient", "X") != Pseudonymizer(SECRET[::-1]).key("patient", "X")


def test_short_or_non_bytes_secret_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Pseudonymizer(b"short")
    with pytest.raises(ValueError, match="bytes"):
        Pseudonymizer("a text secret of enough length")  # type: ignore[arg-type]


def test_repr_and_pickle_do_not_lose_or_show_the_secret() -> None:
    pseudo = Pseudonymizer(SECRET)
    assert SECRET.decode() not in repr(pseudo) and "hidden" in repr(pseudo)
    clone = pickle.loads(pickle.dumps(pseudo))  # what worker processes receive
    assert clone.key("series", "1.2") == pseudo.key("series", "1.2")


def test_create_then_reload_secret(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "radengine" / "secret"
    secret, where = load_or_create_secret(path)
    assert where == path and len(secret) == 32
    text = path.read_text()
    assert text.strip() == secret.hex() and len(text.strip()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary left behind
    again, _ = load_or_create_secret(path)
    assert again == secret  # never regenerated once it exists
    assert Pseudonymizer.from_file(path).key("p", "v") == Pseudonymizer(secret).key("p", "v")


def test_existing_secret_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET.hex() + "\n")
    assert load_or_create_secret(path) == (SECRET, path)


def test_default_location_env_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_secret_path() == tmp_path / "home" / ".config" / "radengine" / "secret"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    secret, path = load_or_create_secret(None)
    assert path == tmp_path / "xdg" / "radengine" / "secret" and path.is_file()
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # invalid per XDG: ignored
    assert default_secret_path() == tmp_path / "home" / ".config" / "radengine" / "secret"
    monkeypatch.setenv(SECRET_ENV, str(tmp_path / "env-secret"))
    secret2, path2 = load_or_create_secret(None)
    assert path2 == tmp_path / "env-secret" and secret2 != secret


def test_bad_secret_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abcd\n")
    with pytest.raises(ValueError, match=r"short'.*holds 2 bytes.*at least 16") as info:
        read_secret(short)
    assert "delete the file" in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        Pseudonymizer.from_file(tmp_path)  # a directory is not a secret file
    with pytest.raises(ValueError, match="holds 2 bytes"):
        load_or_create_secret(short)


def test_non_hex_secret_is_taken_as_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_bytes(b"a long passphrase that is not hex\n")
    assert read_secret(path) == b"a long passphrase that is not hex"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET.hex())
    path.chmod(0)
    with pytest.raises(ValueError, match="cannot read"):
        read_secret(path)


def test_secret_must_stay_outside_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ValueError, match="inside the store"):
        ensure_outside(store / "secret", store)
    with pytest.raises(ValueError, match="inside the store"):
        ensure_outside(store / "keys" / "deep" / "secret", store)
    with pytest.raises(ValueError, match="inside the store"):
        ensure_outside(tmp_path / "x" / ".." / "store" / "secret", store)  # resolved first
    ensure_outside(tmp_path / "secret", store)
    ensure_outside(tmp_path / "store-keys" / "secret", store)  # a prefix is not inside
