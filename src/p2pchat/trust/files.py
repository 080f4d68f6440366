"""Where keys, certificates and pins live on disk, with the permissions secrets need.

- The registry's CA: ``DB.ca-key.pem`` (mode 600) and ``DB.ca.pem`` beside its database.
- A peer's keys: ``DATA/identities/HOST_PORT/USER.key.pem`` (mode 600, made at the first login
  on this machine) and ``USER.cert.pem`` (the certificate the registry issued for it), where
  DATA is ``$XDG_DATA_HOME/p2pchat`` (``~/.local/share/p2pchat``) unless given.
- Pinned registries: ``CONFIG/known_registries`` (``$XDG_CONFIG_HOME/p2pchat``), one line per
  registry address: ``HOST:PORT FINGERPRINT CERTIFICATE`` (the certificate in base64 DER), as
  SSH's ``known_hosts`` pins host keys.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat.trust.certs import Authority, TrustError, cert_pem, fingerprint, private_pem
from p2pchat.trust.signing import Signer

KNOWN_REGISTRIES = "known_registries"


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "p2pchat"


def data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "p2pchat"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` so that only this user can read it, atomically (a crash leaves the old
    file or the new one, never half of one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- the registry's CA


def authority_paths(db: Path) -> tuple[Path, Path]:
    return db.with_name(db.name + ".ca-key.pem"), db.with_name(db.name + ".ca.pem")


def load_or_create_authority(db: Path) -> tuple[Authority, bool]:
    """The registry's CA beside its database, made on first start; True if just made.

    Raises TrustError when only one of the two files exists or they do not match: a lost key
    must not silently become a new CA (every user would see a changed fingerprint).
    """
    key_path, cert_path = authority_paths(db)
    if key_path.exists() and cert_path.exists():
        try:
            key_pem = key_path.read_bytes()
            cert_der = pem_to_der(cert_path.read_bytes())
        except OSError as exc:
            raise TrustError(f"cannot read the registry's CA files: {exc}") from None
        return Authority.load(key_pem, cert_der), False
    if key_path.exists() or cert_path.exists():
        missing = cert_path if key_path.exists() else key_path
        raise TrustError(
            f"{missing} is missing but its pair is there; restore it from a backup, or remove "
            "both files to make a new CA (every peer will then see a new fingerprint)"
        )
    authority = Authority.create(time.time())
    write_private(key_path, private_pem(authority.key))
    write_private(cert_path, cert_pem(authority.cert))
    cert_path.chmod(0o644)  # public
    return authority, True


def pem_to_der(pem: bytes) -> bytes:
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise TrustError("not a PEM file") from None


# ---------------------------------------------------------------------------- a peer's identity


def identity_dir(data: Path, registry: str) -> Path:
    """The folder for one registry's identities (``registry`` is ``HOST:PORT``)."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in registry)
    return data / "identities" / safe


def load_or_create_key(folder: Path, username: str) -> tuple[Signer, bool]:
    """The user's signing key on this machine, made (mode 600) if there is none; True if
    just made."""
    path = folder / f"{username.casefold()}.key.pem"
    if path.exists():
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TrustError(f"{path} does not hold an Ed25519 key")
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return Signer(raw), False
    signer = Signer()
    write_private(path, private_pem(Ed25519PrivateKey.from_private_bytes(signer.seed)))
    return signer, True


def key_file(folder: Path, username: str) -> Path:
    return folder / f"{username.casefold()}.key.pem"


def cert_file(folder: Path, username: str) -> Path:
    return folder / f"{username.casefold()}.cert.pem"


def save_cert(folder: Path, username: str, der: bytes) -> Path:
    path = cert_file(folder, username)
    write_private(path, cert_pem(der))
    return path


def blocked_file(folder: Path, username: str) -> Path:
    return folder / f"{username.casefold()}.blocked"


def load_blocked(folder: Path, username: str) -> list[str]:
    """Whom ``username`` blocks on this machine (a missing or damaged file: nobody)."""
    try:
        return blocked_file(folder, username).read_text(encoding="utf-8").split()
    except (OSError, UnicodeError):
        return []


def save_blocked(folder: Path, username: str, names: list[str]) -> None:
    write_private(blocked_file(folder, username), ("\n".join(names) + "\n").encode())


# ---------------------------------------------------------------------------- pins


class KnownRegistries:
    """The registries this user trusts, by address: a fingerprint and the certificate."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, tuple[str, bytes]] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or line.startswith("#"):
                continue
            try:
                der = base64.b64decode(parts[2], validate=True)
            except binascii.Error:
                continue
            if fingerprint(der) == parts[1]:  # a line edited by hand to a wrong value is ignored
                self._entries[parts[0]] = (parts[1], der)

    def get(self, address: str) -> tuple[str, bytes] | None:
        """The pinned fingerprint and certificate of the registry at ``address``."""
        return self._entries.get(address)

    def pin(self, address: str, der: bytes) -> str:
        fp = fingerprint(der)
        self._entries[address] = (fp, der)
        lines = ["# p2pchat: registries trusted on first use (address, fingerprint, certificate)"]
        lines += [
            f"{addr} {fp_} {base64.b64encode(cert).decode()}"
            for addr, (fp_, cert) in sorted(self._entries.items())
        ]
        write_private(self.path, ("\n".join(lines) + "\n").encode())
        return fp
