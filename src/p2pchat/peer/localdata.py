"""What one peer keeps on this machine, per registry and user: the user's key and certificate,
history (with the outbox), whom they block, and the registries trusted so far.

The shell (``node.py``) calls it; the core never touches files. Key and certificate files are
mode 600 (``trust/files.py``); the history is SQLite (``history.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from p2pchat.peer.core import PeerConfig
from p2pchat.peer.history import History, HistoryError
from p2pchat.trust import files, tls
from p2pchat.trust.certs import TrustError
from p2pchat.trust.signing import Signer

log = logging.getLogger("p2pchat.peer")


class LocalData:
    """The files of the users of one registry on this machine."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        data = Path(config.data_dir) if config.data_dir else files.data_dir()
        known = Path(config.config_dir) if config.config_dir else files.config_dir()
        self.registry = f"{config.registry_host}:{config.registry_port}"
        self.identities = files.identity_dir(data, self.registry)
        self.known = files.KnownRegistries(known / files.KNOWN_REGISTRIES)

    # ------------------------------------------------------------------ the registry

    def check_registry(self, presented: bytes | None) -> str | None:
        """The registry must show the certificate pinned for its address (the one given
        with --registry-fingerprint, or the one seen first); ``TrustError`` if not. Returns
        the new fingerprint to tell the user about when it was pinned just now."""
        if presented is None:
            raise TrustError("the registry showed no certificate")
        address = self.registry
        wanted = self.config.registry_fingerprint
        pinned = self.known.get(address)
        if wanted is None and pinned is not None:
            wanted = pinned[0]
        if wanted is not None:
            tls.check_pin(address, presented, wanted)
        if pinned is not None and pinned[1] == presented:
            return None
        fingerprint = self.known.pin(address, presented)
        return fingerprint if self.config.registry_fingerprint is None else None

    # ------------------------------------------------------------------ a user's files

    def own_files(self, username: str | None) -> tuple[Path, Path] | None:
        """The user's certificate and key files, if both exist."""
        if username is None:
            return None
        cert = files.cert_file(self.identities, username)
        key = files.key_file(self.identities, username)
        return (cert, key) if cert.exists() and key.exists() else None

    def save_certificate(self, username: str, der: bytes) -> None:
        files.save_cert(self.identities, username, der)

    def for_login(self, username: str) -> tuple[Signer, History]:
        """The user's key and history; a new history comes with a new key, because the
        user's message numbers start again (a new stream; receivers keep the old one).
        ``OSError``, ``TrustError``, ``ValueError`` or ``HistoryError`` if they cannot be used."""
        history, fresh = self._open_history(username)
        try:
            if fresh:
                files.key_file(self.identities, username).unlink(missing_ok=True)
            signer, made = files.load_or_create_key(self.identities, username)
        except (OSError, TrustError, ValueError, HistoryError):
            history.close()
            raise
        if made:
            log.info("made a key for %s in %s", username, self.identities)
        return signer, history

    def _open_history(self, username: str) -> tuple[History, bool]:
        self.identities.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.identities / f"{username.casefold()}.history.db"
        fresh = not path.exists()
        history = History(path)
        path.chmod(0o600)
        return history, fresh

    def load_blocked(self, username: str) -> list[str]:
        return files.load_blocked(self.identities, username)

    def save_blocked(self, username: str, names: list[str]) -> None:
        try:
            files.save_blocked(self.identities, username, names)
        except OSError as exc:
            log.warning("cannot keep the list of blocked users: %s", exc)
