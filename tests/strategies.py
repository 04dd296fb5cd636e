"""The one home of hypothesis strategies for packets and datagrams."""

from __future__ import annotations

from hypothesis import strategies as st

from gossip.wire import (
    MESSAGE_KEY_SIZE,
    Packet,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
)

message_keys = st.binary(min_size=MESSAGE_KEY_SIZE, max_size=MESSAGE_KEY_SIZE)
payloads = st.binary(max_size=1200)
key_lists = st.lists(message_keys, min_size=1, max_size=40).map(tuple)

packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(PushMessage, message_keys, payloads),
    st.builds(PushAck, message_keys),
    st.builds(PullSync, key_lists),
    st.builds(PullRequest, key_lists),
    st.builds(PullResponse, message_keys, payloads),
)

cluster_keys = st.binary(min_size=32, max_size=32)


@st.composite
def mutations(draw: st.DrawFn, datagram: bytes) -> bytes:
    """A hostile variant of a valid datagram: bit flips, truncation, extension, splices."""
    data = bytearray(datagram)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "set", "splice"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "splice" and data:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
    return bytes(data)
