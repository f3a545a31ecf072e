"""Pseudonymisation: keyed hashes in place of patient, study and series identifiers.

A store must let training split data by patient and group slices by series without ever
holding an identifier that points back to a person. radengine therefore replaces every such
identifier with a keyed hash (HMAC-SHA256) under a secret that lives *outside* the store:

* the same secret gives the same keys, so reruns, resumed ingests and later additions to a store
  agree on who is who;
* without the secret the keys cannot be recomputed from a guessed patient ID (a plain hash
  could: patient IDs are short and often sequential), so a copied store does not re-identify
  anyone;
* whoever holds the secret and the archive can still map a key back to its series (by
  recomputing it), which is what a data protection officer needs for an erasure request.

The secret is a file of 32 random bytes written as hex text. :func:`load_or_create_secret`
finds it (argument, ``$RADENGINE_SECRET``, or ``$XDG_CONFIG_HOME/radengine/secret`` defaulting
to ``~/.config/radengine/secret``) and creates it with mode 0600 when it does not exist yet.
Keep a backup: losing it means new ingests produce keys that no longer match the old ones.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from radengine.errors import UserError

__all__ = [
    "KEY_HEX_CHARS",
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "Pseudonymizer",
    "SecretError",
    "default_secret_path",
    "ensure_outside",
    "load_or_create_secret",
    "read_secret",
    "secret_path",
]

SECRET_ENV = "RADENGINE_SECRET"
"""Environment variable naming the secret file (a path, never the secret itself)."""

MIN_SECRET_BYTES = 16
"""Shortest secret accepted: 128 bits, below which guessing the key becomes thinkable."""

KEY_HEX_CHARS = 16
"""Hex characters kept of each HMAC: 64 bits, so even 10^7 series collide with probability
about 3e-6, while index columns stay short."""

_NEW_SECRET_BYTES = 32


class SecretError(UserError, ValueError):
    """A secret file that cannot be read, created or used (too short, inside the store).
    Still a ValueError for callers that catch that."""


class Pseudonymizer:
    """Keyed hashing of identifiers (HMAC-SHA256 under a secret).

    ``key(kind, value)`` is ``HMAC-SHA256(secret, kind + "\\0" + value)`` as hex, cut to
    :data:`KEY_HEX_CHARS` characters. ``kind`` (e.g. ``"patient"``, ``"study"``, ``"series"``)
    separates name spaces, so a patient ID that happens to equal a UID string never yields the
    same key. Values are hashed exactly as given (UTF-8); callers normalise them (DICOM pads
    strings with spaces) before hashing.

    Args:
        secret: The secret, at least :data:`MIN_SECRET_BYTES` bytes.

    Raises:
        ValueError: If the secret is not bytes or is too short.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)):
            raise ValueError(f"secret must be bytes, got {type(secret).__name__}")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed "
                "(use load_or_create_secret() to generate a 32-byte one)"
            )
        self._secret = bytes(secret)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pseudonymizer:
        """Build a pseudonymiser from a secret file (see :func:`read_secret` for its format).

        Args:
            path: The secret file.

        Returns:
            A :class:`Pseudonymizer` using that secret.

        Raises:
            SecretError: If the file cannot be read or holds too short a secret.
        """
        return cls(read_secret(Path(path)))

    def key(self, kind: str, value: str) -> str:
        """The pseudonymous key of one identifier.

        Args:
            kind: Name space of the identifier, e.g. ``"patient"`` or ``"series"``.
            value: The identifier itself.

        Returns:
            :data:`KEY_HEX_CHARS` lowercase hex characters.
        """
        message = kind.encode("utf-8") + b"\0" + value.encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]

    def __repr__(self) -> str:
        # Never show the secret, not even in a traceback or a log line.
        return "Pseudonymizer(<secret hidden>)"

    def __reduce__(self) -> tuple[type[Pseudonymizer], tuple[bytes]]:
        # Worker processes need the secret; pickling keeps __slots__ classes simple to send.
        return (Pseudonymizer, (self._secret,))


def default_secret_path() -> Path:
    """Where the secret lives when no path is given.

    ``$RADENGINE_SECRET`` if set, else ``$XDG_CONFIG_HOME/radengine/secret``, else
    ``~/.config/radengine/secret``.

    Returns:
        The path (which need not exist yet).
    """
    env = os.environ.get(SECRET_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME", "").strip()
    # XDG says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    return base / "radengine" / "secret"


def read_secret(path: Path) -> bytes:
    """Read a secret file.

    The file holds hex text (what :func:`load_or_create_secret` writes; surrounding whitespace
    is ignored). Any other content is taken as raw bytes, so a user may bring a secret of their
    own making, as long as it has at least :data:`MIN_SECRET_BYTES` bytes.

    Args:
        path: The secret file.

    Returns:
        The secret.

    Raises:
        SecretError: If the file cannot be read or the secret is too short.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecretError(
            f"cannot read the pseudonymisation secret {str(path)!r}: {exc.strerror or exc}; "
            f"fix its permissions, point ${SECRET_ENV} at a readable secret file, or remove "
            "the path to have a new secret generated (new keys will not match old ones)"
        ) from exc
    text = data.strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = text
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the pseudonymisation secret {str(path)!r} holds {len(secret)} bytes; at least "
            f'{MIN_SECRET_BYTES} are needed. Write a longer one (e.g. `python -c "import '
            f'secrets; print(secrets.token_hex(32))"`) or delete the file to have one generated'
        )
    return secret


def _write_new_secret(path: Path) -> None:
    """Create ``path`` with a fresh secret, atomically and without clobbering a concurrent one.

    The secret goes to a private temporary file that is fsynced and then hard-linked to its
    final name: a link fails if the name exists, so two processes that start an ingest at the
    same moment end up sharing the first secret instead of silently overwriting it.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = (secrets.token_hex(_NEW_SECRET_BYTES) + "\n").encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # someone else won the race: their secret is the one to use
        except OSError as exc:
            # File systems without hard links: fall back to a rename (atomic, may clobber).
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if not path.exists():
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    # Make the directory entry durable too, so a crash cannot lose a secret already used.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def secret_path(path: Path | str | None = None) -> Path:
    """The secret file :func:`load_or_create_secret` would use, without touching it.

    Callers check everything else first (sources exist, the secret is outside the store)
    with this path, so that a command that fails on its input never creates a secret.

    Args:
        path: The secret file; ``None`` means :func:`default_secret_path`.

    Returns:
        The path (which need not exist yet).
    """
    return Path(path).expanduser() if path is not None else default_secret_path()


def load_or_create_secret(path: Path | str | None = None) -> tuple[bytes, Path]:
    """Load the pseudonymisation secret, creating it on first use.

    Call it only once the command's inputs are known to be usable: a secret created by a
    command that then fails on a typo in a path would be a surprise file in the user's home.

    Args:
        path: The secret file; ``None`` means :func:`default_secret_path`.

    Returns:
        ``(secret, path)``: the secret and the file it came from (or was written to).

    Raises:
        SecretError: If the file exists but cannot be read or is too short, or cannot be created.
    """
    target = secret_path(path)
    if not target.exists():
        try:
            _write_new_secret(target)
        except OSError as exc:
            raise SecretError(
                f"cannot create the pseudonymisation secret {str(target)!r}: "
                f"{exc.strerror or exc}; choose a writable location with --secret or "
                f"${SECRET_ENV}"
            ) from exc
    return read_secret(target), target


def ensure_outside(secret_path: Path | str, store_path: Path | str) -> None:
    """Refuse a secret that lies inside a store.

    A store is meant to be copied and shared; a secret inside it would travel along and turn
    every key back into a recomputable hash.

    Args:
        secret_path: The secret file.
        store_path: The store directory.

    Raises:
        SecretError: If the secret is the store directory or anywhere below it.
    """
    secret = Path(secret_path).expanduser().resolve()
    store = Path(store_path).expanduser().resolve()
    if secret == store or store in secret.parents:
        raise SecretError(
            f"the pseudonymisation secret {str(secret)!r} lies inside the store "
            f"{str(store)!r}; keep it outside (e.g. the default ~/.config/radengine/secret, "
            f"or another path via --secret / ${SECRET_ENV}) so that the store can be shared"
        )
