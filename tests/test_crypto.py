"""The AES-256-CBC + HMAC suite, the keyring, replay protection, and go-gossip's crypto flaws."""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable

import pytest
from Crypto.Cipher import AES
from hypothesis import given
from hypothesis import strategies as st

from gossip.crypto import (
    ClusterKey,
    Keyring,
    ReplayGuard,
    available_backends,
    generate_key,
    key_from_passphrase,
    key_id_of,
)
from gossip.errors import DecryptError, LocalProtocolError, MalformedPacket
from gossip.wire import (
    LABEL_SIZE,
    Codec,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
    encode,
    new_message_key,
)

from .strategies import cluster_keys, packets

MSG = PushMessage(bytes(range(16)), b"hello gossip" * 40)
BACKENDS = available_backends()


def seeded_random(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def pair(key: bytes | None = None, **kw: object) -> tuple[Codec, Codec]:
    key = key or generate_key()
    return Codec(Keyring(key), **kw), Codec(Keyring(key), **kw)  # type: ignore[arg-type]


# --- the construction --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_wire_bytes_are_standard_cbc_with_random_iv(backend: str) -> None:
    """What goes on the wire is plain AES-256-CBC under the IV in front of it, and the tag is
    HMAC-SHA256 over label | IV | ciphertext: any implementation can check and read it."""
    from Crypto.Hash import SHA256  # noqa: PLC0415
    from Crypto.Protocol.KDF import HKDF  # noqa: PLC0415

    master = generate_key()
    codec = Codec(Keyring(master, backend=backend))  # type: ignore[arg-type]
    enc_key = HKDF(master, 32, b"trio-gossip/v1", SHA256, 1, b"trio-gossip v1 aes-256-cbc")
    mac_key = HKDF(master, 32, b"trio-gossip/v1", SHA256, 1, b"trio-gossip v1 hmac-sha256")
    for _ in range(3):  # several packets: the chain state must not leak into the format
        for packet, header, body in (
            (MSG, 31, MSG.data),  # message packets: the key is in the authenticated header
            (PullSync((MSG.key,) * 2), 15, MSG.key * 2),
        ):
            dg = codec.encode(packet, 10.0)
            head, iv, ct, tag = (
                dg[:header],
                dg[header : header + 16],
                dg[header + 16 : -16],
                dg[-16:],
            )
            assert tag == hmac.digest(mac_key, head + iv + ct, "sha256")[:16]
            plain = AES.new(enc_key, AES.MODE_CBC, iv).decrypt(ct)
            assert plain[: -plain[-1]] == body
            assert int.from_bytes(dg[3:7], "big") == key_id_of(master)
        assert dg[15:31] != MSG.key  # key lists stay encrypted


@pytest.mark.skipif(len(BACKENDS) < 2, reason="the cryptography package is not installed")
@given(st.lists(packets, min_size=1, max_size=8), st.integers(0, 2**32))
def test_backends_are_byte_identical(batch: list[object], seed: int) -> None:
    key = bytes(32)
    a = Codec(Keyring(key, backend="pycryptodome", random_bytes=seeded_random(seed)))
    b = Codec(Keyring(key, backend="cryptography", random_bytes=seeded_random(seed)))
    a_rx = Codec(Keyring(key, backend="cryptography"), max_datagram=65507)
    b_rx = Codec(Keyring(key, backend="pycryptodome"), max_datagram=65507)
    for i, packet in enumerate(batch):
        try:
            da = a.encode(packet, float(i))  # type: ignore[arg-type]
        except LocalProtocolError:
            continue  # too large for 1400 bytes: both refuse alike
        db = b.encode(packet, float(i))  # type: ignore[arg-type]
        assert da == db
        assert a_rx.decode_untrusted(da, float(i)) == packet
        assert b_rx.decode_untrusted(db, float(i)) == packet


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=600)), max_size=6))
def test_tags_are_truncated_hmac_sha256_packet_after_packet(
    backend: str, packets: list[tuple[bytes, bytes]]
) -> None:
    """Each backend computes its MAC its own way (cryptography: a keyed context copied per
    packet); every tag must still be the stdlib's HMAC-SHA256, and none may depend on the
    packets before it."""
    from Crypto.Hash import SHA256  # noqa: PLC0415
    from Crypto.Protocol.KDF import HKDF  # noqa: PLC0415

    master = bytes(range(32))
    mac_key = HKDF(master, 32, b"trio-gossip/v1", SHA256, 1, b"trio-gossip v1 hmac-sha256")
    tx = ClusterKey(master, backend=backend)  # type: ignore[arg-type]
    rx = ClusterKey(master, backend=backend)  # type: ignore[arg-type]
    for label, body in packets:
        sealed = tx.seal(label, body)
        assert sealed[-16:] == hmac.digest(mac_key, sealed[:-16], "sha256")[:16]
        assert rx.open_untrusted(sealed, len(label)) == body
        forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        with pytest.raises(DecryptError, match="MAC"):
            rx.open_untrusted(forged, len(label))


def test_auto_backend_prefers_cryptography() -> None:
    assert Keyring(bytes(32)).backend == BACKENDS[0]
    with pytest.raises(LocalProtocolError, match="backend"):
        Keyring(bytes(32), backend="rot13")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_single_bit_flip_is_rejected(backend: str) -> None:
    key = generate_key()
    tx = Codec(Keyring(key, backend=backend))  # type: ignore[arg-type]
    for packet in (MSG, PushAck(MSG.key), PullSync((MSG.key,) * 3)):
        dg = tx.encode(packet, 5.0)
        for bit in range(len(dg) * 8):
            rx = Codec(Keyring(key, backend=backend))  # type: ignore[arg-type]
            bad = bytearray(dg)
            bad[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises((DecryptError, MalformedPacket)):
                rx.decode_untrusted(bytes(bad), 5.0)


@given(cluster_keys, st.binary(min_size=1, max_size=200), st.integers(0, 2**32))
def test_any_tampering_is_rejected(key: bytes, garbage: bytes, seed: int) -> None:
    tx, rx = pair(key)
    original = tx.encode(MSG, 0.0)
    dg = bytearray(original)
    start = random.Random(seed).randrange(len(dg))
    dg[start : start + len(garbage)] = garbage
    if bytes(dg) == original:
        return  # the "garbage" rewrote the bytes that were there
    with pytest.raises((DecryptError, MalformedPacket)):
        rx.decode_untrusted(bytes(dg), 0.0)


def test_wrong_key_rejected_every_time() -> None:
    """go-gossip flaw 7 counterpart: 0 of 5000 packets under a wrong key get through, both
    with an honest key id (unknown id) and with the receiver's id forged into the label."""
    rx_key = generate_key()
    rx = Codec(Keyring(rx_key))
    forged_id = key_id_of(rx_key).to_bytes(4, "big")
    accepted = 0
    for _ in range(2500):
        dg = Codec(Keyring(generate_key())).encode(PushAck(new_message_key()), 0.0)
        for attempt in (dg, dg[:3] + forged_id + dg[7:]):
            try:
                rx.decode_untrusted(attempt, 0.0)
                accepted += 1
            except DecryptError as err:
                assert err.reason in ("unknown-key", "mac")
    assert accepted == 0


# --- keyring and rotation ----------------------------------------------------------------


def test_rotation_without_loss() -> None:
    old, new = generate_key(), generate_key()
    a, b = Keyring(old), Keyring(old)
    ca, cb = Codec(a), Codec(b)
    a.install(new)  # step 1 on A: accepts both, still sends old
    assert cb.decode_untrusted(ca.encode(MSG, 1.0), 1.0) == MSG
    a.use(new)  # step 2 on A before B installed it: B cannot read it yet
    with pytest.raises(DecryptError, match="unknown key id"):
        cb.decode_untrusted(ca.encode(MSG, 1.0), 1.0)
    b.install(new)
    assert cb.decode_untrusted(ca.encode(MSG, 2.0), 2.0) == MSG
    assert ca.decode_untrusted(cb.encode(MSG, 2.0), 2.0) == MSG  # B still sends old: A accepts
    b.use(new)
    a.remove(old)
    b.remove(old)
    assert a.key_ids() == b.key_ids() == [key_id_of(new)]
    assert cb.decode_untrusted(ca.encode(MSG, 3.0), 3.0) == MSG


def test_keyring_misuse() -> None:
    k = generate_key()
    ring = Keyring(k)
    with pytest.raises(LocalProtocolError, match="primary"):
        ring.remove(k)
    with pytest.raises(LocalProtocolError, match="install"):
        ring.use(generate_key())
    with pytest.raises(LocalProtocolError, match="not installed"):
        ring.remove(generate_key())
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        Keyring(b"short")
    assert ring.install(k) is ring.primary  # idempotent
    assert len(ring) == 1


def test_passphrase_kdf_is_scrypt_with_documented_salt() -> None:
    key = key_from_passphrase("correct horse")
    assert key == hashlib.scrypt(
        b"correct horse",
        salt=b"trio-gossip/v1/passphrase",
        n=2**15,
        r=8,
        p=1,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )
    assert key != hashlib.sha256(b"correct horse").digest()  # go-gossip flaw 6
    with pytest.raises(LocalProtocolError):
        key_from_passphrase("")


# --- replay protection -------------------------------------------------------------------


def test_replay_window() -> None:
    tx, rx = pair()
    dg = tx.encode(MSG, 1000.0)
    assert rx.decode_untrusted(dg, 1030.0) == MSG
    with pytest.raises(DecryptError) as info:
        rx.decode_untrusted(dg, 1030.0)
    assert info.value.reason == "replay"
    for now in (1060.5, 939.0):  # outside 60 s either way
        with pytest.raises(DecryptError) as info:
            pair(b"k" * 32)[1].decode_untrusted(pair(b"k" * 32)[0].encode(MSG, 1000.0), now)
        assert info.value.reason == "stale"


def test_replay_guard_is_bounded_and_evicts_safely() -> None:
    guard = ReplayGuard(window=60.0, capacity=100)
    for i in range(1000):
        guard.check(i.to_bytes(16, "big"), 1_000_000 + i, 1_000_500)
    assert len(guard) <= 100
    # An evicted id cannot come back: its timestamp is below the floor.
    with pytest.raises(DecryptError, match="window"):
        guard.check((5).to_bytes(16, "big"), 1_000_005, 1_000_500)
    # Newer packets still pass.
    guard.check(b"new" * 5 + b"!", 1_001_000, 1_001_000)


def test_replay_guard_expires_old_entries() -> None:
    guard = ReplayGuard(window=1.0, capacity=1000)
    for i in range(100):
        guard.check(i.to_bytes(16, "big"), i * 100, i * 100)
    assert len(guard) < 20  # ~10 s of packets minus the 1 s window


def test_replay_guard_config_errors() -> None:
    with pytest.raises(LocalProtocolError):
        ReplayGuard(window=0)
    with pytest.raises(LocalProtocolError):
        ReplayGuard(capacity=0)


def test_cluster_key_rejects_short_keys() -> None:
    with pytest.raises(LocalProtocolError):
        ClusterKey(bytes(31))


# --- go-gossip's flaws (../shared/reference/go-gossip.md section 3) ----------------------


@pytest.mark.parametrize("datagram", [b"\x01\x02", b"\x01\x01", b"\x01\x01\x00", b"\xa1\x01"])
def test_go_flaw_1_tiny_datagrams_do_not_crash(datagram: bytes) -> None:
    for codec in (Codec(), Codec(Keyring(generate_key()))):
        with pytest.raises((MalformedPacket, DecryptError)):
            codec.decode_untrusted(datagram, 0.0)


def test_go_flaw_2_inconsistent_lengths_are_malformed() -> None:
    # Our lists carry no separate count: a key list whose length is not whole keys is refused.
    for ptype in (3, 4):
        dg = encode(PullSync((MSG.key,)))
        bad = dg[:1] + bytes([ptype]) + dg[2:] + b"\x00" * 7
        with pytest.raises(MalformedPacket):
            Codec().decode_untrusted(bad, 0.0)


def test_go_flaw_3_encrypted_node_refuses_plaintext() -> None:
    rx = Codec(Keyring(generate_key()))
    for packet in (PullRequest((MSG.key,)), PullSync((MSG.key,)), MSG, PullResponse(MSG.key, b"x")):
        with pytest.raises(DecryptError) as info:
            rx.decode_untrusted(encode(packet), 0.0)
        assert info.value.reason == "encryption"


def test_go_flaw_4_ciphertext_cannot_be_bit_flipped_or_injected() -> None:
    key = generate_key()
    tx, rx = pair(key)
    dg = bytearray(tx.encode(MSG, 0.0))
    dg[LABEL_SIZE + 16 + 5] ^= 0x20  # flip a data bit through CBC malleability (IV byte 5)
    with pytest.raises(DecryptError, match="MAC"):
        rx.decode_untrusted(bytes(dg), 0.0)


def test_go_flaw_5_equal_plaintexts_give_different_ciphertexts() -> None:
    tx, _ = pair()
    sealed = {tx.encode(PullRequest((MSG.key,)), 0.0) for _ in range(1000)}
    assert len(sealed) == 1000
    ivs = {dg[LABEL_SIZE : LABEL_SIZE + 16] for dg in sealed}  # PullRequest: IV after label
    assert len(ivs) == 1000


def test_go_flaw_7_padding_is_checked_under_the_mac() -> None:
    """A correctly MACed packet with bad padding is still refused (the padding check is
    strict, not go-gossip's `pad <= len`)."""
    key = generate_key()
    ck = ClusterKey(key, backend="pycryptodome")
    rx = Codec(Keyring(key))
    label = bytes([0xA1, 2, 1]) + ck.key_id.to_bytes(4, "big") + bytes(8)
    from Crypto.Hash import SHA256  # noqa: PLC0415
    from Crypto.Protocol.KDF import HKDF  # noqa: PLC0415

    enc = HKDF(key, 32, b"trio-gossip/v1", SHA256, 1, b"trio-gossip v1 aes-256-cbc")
    mac = HKDF(key, 32, b"trio-gossip/v1", SHA256, 1, b"trio-gossip v1 hmac-sha256")
    iv = bytes(16)
    for tail in (b"\x00", b"\x11", b"\x02\x03"):  # pad 0, pad 17, inconsistent pad bytes
        body = MSG.key + bytes(16 - len(tail)) + tail
        ct = AES.new(enc, AES.MODE_CBC, iv).encrypt(body)
        head = label + iv + ct
        dg = head + hmac.digest(mac, head, "sha256")[:16]
        with pytest.raises(DecryptError) as info:
            rx.decode_untrusted(dg, 0.0)
        assert info.value.reason == "padding"


def test_go_flaw_8_replays_are_refused_even_after_restart() -> None:
    key = generate_key()
    tx = Codec(Keyring(key))
    dg = tx.encode(MSG, 100.0)
    rx = Codec(Keyring(key))
    assert rx.decode_untrusted(dg, 100.0) == MSG
    with pytest.raises(DecryptError, match="seen before"):
        rx.decode_untrusted(dg, 100.5)
    restarted = Codec(Keyring(key))  # a fresh table: the timestamp still refuses old packets
    with pytest.raises(DecryptError, match="window"):
        restarted.decode_untrusted(dg, 161.0)


def test_go_flaw_10_message_keys_are_unpredictable() -> None:
    state = random.getstate()  # the global PRNG is everyone's: give it back as it was
    try:
        random.seed(1234)
        first = new_message_key()
        random.seed(1234)
        assert new_message_key() != first  # not derived from a seedable PRNG
    finally:
        random.setstate(state)
    same_ms = {new_message_key(5)[6:] for _ in range(1000)}
    assert len(same_ms) == 1000  # 80 random bits per key, even within one millisecond
