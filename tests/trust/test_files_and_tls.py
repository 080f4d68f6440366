"""Keys and pins on disk, and TLS contexts that show nothing before the other side proves itself."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest

from p2pchat.trust import tls
from p2pchat.trust.certs import Authority, TrustError, ca_key, fingerprint, read_user_cert
from p2pchat.trust.files import (
    KnownRegistries,
    authority_paths,
    cert_file,
    key_file,
    load_or_create_authority,
    load_or_create_key,
    save_cert,
    write_private,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_written_for_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret"
    write_private(path, b"one")
    write_private(path, b"two")
    assert path.read_bytes() == b"two"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary file left


def test_the_registry_ca_is_made_once_and_kept(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    made, new = load_or_create_authority(db)
    again, new_again = load_or_create_authority(db)
    assert new and not new_again
    assert made.fingerprint == again.fingerprint
    key_path, cert_path = authority_paths(db)
    assert mode(key_path) == 0o600
    key_path.unlink()
    with pytest.raises(TrustError, match=r"ca-key\.pem is missing"):
        load_or_create_authority(db)
    assert cert_path.exists()  # nothing was replaced


def test_a_users_key_is_made_on_the_first_login_and_kept(tmp_path: Path) -> None:
    signer, new = load_or_create_key(tmp_path, "Alice")
    again, new_again = load_or_create_key(tmp_path, "alice")
    assert new and not new_again and signer.public_key == again.public_key
    assert mode(key_file(tmp_path, "alice")) == 0o600


def test_pins_survive_a_restart_and_a_line_edited_wrong_is_ignored(tmp_path: Path) -> None:
    ca = Authority.create(time.time())
    other = Authority.create(time.time())
    known = KnownRegistries(tmp_path / "known_registries")
    assert known.get("reg:15600") is None
    assert known.pin("reg:15600", ca.cert) == ca.fingerprint
    known.pin("other:1", other.cert)
    again = KnownRegistries(tmp_path / "known_registries")
    assert again.get("reg:15600") == (ca.fingerprint, ca.cert)
    text = (tmp_path / "known_registries").read_text()
    (tmp_path / "known_registries").write_text(text.replace(other.fingerprint, ca.fingerprint))
    assert KnownRegistries(tmp_path / "known_registries").get("other:1") is None
    assert mode(tmp_path / "known_registries") == 0o600


def test_a_changed_registry_fingerprint_names_both_and_says_what_to_do() -> None:
    ca, other = Authority.create(time.time()), Authority.create(time.time())
    tls.check_pin("reg:15600", ca.cert, ca.fingerprint)
    with pytest.raises(TrustError) as caught:
        tls.check_pin("reg:15600", other.cert, ca.fingerprint)
    message = str(caught.value)
    assert other.fingerprint in message and ca.fingerprint in message
    assert "known_registries" in message and "--registry-fingerprint" in message


async def test_a_link_shows_nothing_of_its_user_until_the_dialer_has_proved_itself(
    tmp_path: Path,
) -> None:
    now = time.time()
    ca = Authority.create(now)
    server_ctx = tls.peer_server(now)
    tls.trust_registry(server_ctx, ca.cert)
    seen: list[bytes | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(tls.peer_certificate(writer.get_extra_info("ssl_object")))
        writer.write(b"welcome\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]

    def identity(name: str, authority: Authority) -> tuple[Path, Path]:
        folder = tmp_path / name
        signer, _ = load_or_create_key(folder, name)
        save_cert(folder, name, authority.issue(name, signer.public_key, now))
        return cert_file(folder, name), key_file(folder, name)

    try:
        # a dialer with alice's certificate gets in; the acceptor learns who it is
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(*identity("alice", ca))
        )
        assert await reader.readline() == b"welcome\n"
        shown = tls.peer_certificate(writer.get_extra_info("ssl_object"))
        assert shown is not None and b"alice" not in shown and b"p2pchat peer" in shown
        writer.close()
        [alice] = seen
        assert alice is not None and read_user_cert(alice, ca_key(ca.cert), now).username == "alice"

        # a stranger (no certificate, or one from another registry) gets nothing at all
        for ctx in (tls.client(), tls.client(*identity("mallory", Authority.create(now)))):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
                assert await reader.read() == b""
                writer.close()
            except (ConnectionError, OSError):
                pass
        assert len(seen) == 1
    finally:
        server.close()
        await server.wait_closed()
    assert fingerprint(ca.cert) == ca.fingerprint
