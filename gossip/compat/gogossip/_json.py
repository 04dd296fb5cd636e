"""Go ``encoding/json`` semantics for the two go-gossip bodies, applied to untrusted bytes.

A go-gossip node decodes a PullResponse with ``json.Unmarshal(body, &PullResponse{})`` into
``struct { Keys [][8]byte; Values [][]byte }``. To interoperate we accept exactly what that
call accepts and reject what it rejects; this module re-implements the relevant part of Go's
decoder by hand instead of leaning on Python's ``json`` module, because the two differ on
inputs a peer can send:

- Go's scanner accepts invalid UTF-8 inside strings and nests up to 10,000 levels; Python's
  ``json`` rejects the first and raises ``RecursionError`` long before the second.
- Go matches member names case-insensitively with Unicode simple folding, so ``"keys"``,
  ``"KEYS"``, ``"\\u212aeys"`` (KELVIN SIGN) and ``"Key\\u017f"`` (LATIN SMALL LETTER LONG S) all
  name the ``Keys`` field. Unknown members are ignored whatever their value.
- ``[8]byte`` is a JSON *array* of numbers (only ``[]byte`` is base64). A shorter array
  zero-fills the key, extra elements are skipped unread, a ``null`` element keeps the old
  byte, a number must be a plain unsigned integer no larger than 255.
- ``[]byte`` is a padded standard-base64 string (``\\r`` and ``\\n`` inside it are skipped,
  non-zero trailing bits are accepted, missing padding is not), ``null`` (empty), or - since
  the array path of Go's decoder does not special-case bytes - a JSON array of numbers.
- A member given twice decodes the second time *into the slice left by the first*: elements
  are reused, not reset (Go's documented "resets the slice length" is not what the code does
  with ``null`` elements). We model the backing arrays so the result is Go's.
- Syntax is checked over the whole body (trailing bytes other than JSON whitespace are an
  error, as is any type mismatch); a top-level ``null`` decodes to an empty response.

Work is linear in the input and memory is bounded by it: the parser is iterative with an
explicit stack (depth capped at Go's 10,000), token matching uses possessive regular
expressions that cannot backtrack, and values nobody reads are validated without being built.
Every error raises :class:`~gossip.errors.MalformedPacket`; nothing else escapes.
"""

from __future__ import annotations

import binascii
import re
from typing import Final

from gossip.errors import MalformedPacket

__all__ = ["MAX_NESTING_DEPTH", "decode_pull_request_body", "decode_pull_response_body"]

#: Go's ``encoding/json`` scanner refuses to nest deeper than this.
MAX_NESTING_DEPTH: Final = 10_000

_WS = re.compile(rb"[ \t\n\r]*+")
# Possessive quantifiers: a failing match cannot backtrack, so matching is linear.
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"')
_NUMBER = re.compile(rb"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+")
_ESCAPE = re.compile(
    rb"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|\\u([0-9a-fA-F]{4})"
    rb'|\\(["\\/bfnrt])'
)
_SIMPLE_ESCAPES: Final = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
}
# Standard alphabet, padded; newlines already removed. Go's StdEncoding is not Strict, so
# the unused low bits of the last quantum may be non-zero.
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?+")

# Go's own output, byte for byte (no whitespace, canonical numbers, padded base64 strings):
# decoded without the general state machine. Anything else takes the general path, which
# gives the same answer on this subset (a test checks both agree).
_U8_TEXT = rb"(?:0|[1-9][0-9]{0,2})"
_KEY_TEXT = rb"\[" + _U8_TEXT + rb"(?:," + _U8_TEXT + rb"){7}\]"
_VALUE_TEXT = rb'"[A-Za-z0-9+/=]*+"'
_CANONICAL = re.compile(
    rb'\{"Keys":\[((?:' + _KEY_TEXT + rb"(?:," + _KEY_TEXT + rb")*+)?+)"
    rb'\],"Values":\[((?:' + _VALUE_TEXT + rb"(?:," + _VALUE_TEXT + rb")*+)?+)\]\}"
)
_DIGITS = re.compile(rb"[0-9]++")
_QUOTED = re.compile(rb'"([^"]*+)"')

_KEYS_FOLDED: Final = "KEYS"
_VALUES_FOLDED: Final = "VALUES"

# Targets: what the value being parsed decodes into.
_T_SKIP: Final = 0  # nothing: validate only (unknown member, key element past index 7)
_T_ROOT: Final = 1  # the PullResponse struct
_T_EMPTY: Final = 2  # the PullRequest struct (no exported fields)
_T_KEYS: Final = 3  # the Keys field, [][8]byte
_T_KEY: Final = 4  # one [8]byte
_T_U8: Final = 5  # one uint8 inside a [8]byte or a []byte
_T_VALUES: Final = 6  # the Values field, [][]byte
_T_BYTES: Final = 7  # one []byte

# Frames: open containers.
_F_OBJ_ROOT: Final = 0
_F_OBJ_SKIP: Final = 1
_F_ARR_SKIP: Final = 2
_F_ARR_KEYS: Final = 3
_F_ARR_KEY: Final = 4
_F_ARR_VALUES: Final = 5
_F_ARR_BYTES: Final = 6

_TYPE_NAMES: Final = {
    _T_ROOT: "struct",
    _T_EMPTY: "struct",
    _T_KEYS: "[][8]byte",
    _T_KEY: "[8]byte",
    _T_U8: "uint8",
    _T_VALUES: "[][]byte",
    _T_BYTES: "[]byte",
}


class _Bytes:
    """A Go ``[]byte``: ``backing`` is the array up to the capacity, ``length`` the length."""

    __slots__ = ("backing", "length")

    def __init__(self, backing: bytearray | None = None, length: int = 0) -> None:
        self.backing = backing if backing is not None else bytearray()
        self.length = length

    def value(self) -> bytes:
        return bytes(self.backing[: self.length])


class _KeySlice:
    """A Go ``[][8]byte`` modelled with its capacity (``len(backing)``)."""

    __slots__ = ("backing", "length")

    def __init__(self) -> None:
        self.backing: list[bytearray] = []
        self.length = 0


class _ValueSlice:
    """A Go ``[][]byte`` modelled with its capacity (``len(backing)``)."""

    __slots__ = ("backing", "length")

    def __init__(self) -> None:
        self.backing: list[_Bytes] = []
        self.length = 0


class _Frame:
    """An open container. ``ref`` is what its elements decode into (None when skipped);
    ``count`` the index of the element being parsed, then the element count."""

    __slots__ = ("count", "kind", "ref")

    def __init__(self, kind: int, ref: bytearray | _Bytes | _KeySlice | _ValueSlice | None):
        self.kind = kind
        self.ref = ref
        self.count = 0


#: What a value decodes into: (target, container, index). For _T_U8 the container is the
#: bytearray holding the byte; for _T_BYTES the Values slice; for _T_KEY the [8]byte.
_Target = tuple[int, bytearray | _ValueSlice | None, int]


def _skip_ws(data: bytes, pos: int) -> int:
    match = _WS.match(data, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _error(message: str, pos: int) -> MalformedPacket:
    return MalformedPacket(f"go-gossip JSON: {message} at offset {pos}")


def _unquote(raw: bytes) -> bytes:
    """Unquote the inside of a JSON string already matched by ``_STRING``.

    Returns UTF-8 bytes. Escapes are applied as Go does (a valid surrogate pair is combined,
    a lone surrogate becomes U+FFFD); invalid UTF-8 is kept here and replaced by the caller
    only where it matters (member names): no ASCII outcome depends on how it is replaced.
    """
    if b"\\" not in raw:
        return raw

    def escape(match: re.Match[bytes]) -> bytes:
        high, low, single, simple = match.groups()
        if simple is not None:
            return _SIMPLE_ESCAPES[simple]
        if high is not None:
            code = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
            return chr(code).encode("utf-8")
        code = int(single, 16)
        if 0xD800 <= code <= 0xDFFF:
            return "\ufffd".encode()
        return chr(code).encode("utf-8")

    return _ESCAPE.sub(escape, raw)


def _fold_name(name: bytes) -> str:
    """Go's ``foldName`` restricted to what can equal an ASCII field name.

    ASCII letters fold to upper case; among non-ASCII runes only KELVIN SIGN (to ``K``) and
    LATIN SMALL LETTER LONG S (to ``S``) fold into the letters of ``Keys``/``Values``. Other
    runes stay non-ASCII and therefore never match.
    """
    text = name.decode("utf-8", "replace").replace("\u212a", "K").replace("\u017f", "S")
    if text.isascii():
        return text.upper()
    return text  # cannot equal an ASCII name


def _base64_untrusted(text: bytes, pos: int) -> _Bytes:
    """Go's ``base64.StdEncoding.Decode`` into ``make([]byte, DecodedLen(len(text)))``."""
    capacity = len(text) // 4 * 3
    if b"\r" in text or b"\n" in text:
        text = text.replace(b"\r", b"").replace(b"\n", b"")
    if _BASE64.fullmatch(text) is None:
        raise _error("illegal base64 data", pos)
    decoded = binascii.a2b_base64(text)
    backing = bytearray(decoded)
    backing.extend(bytes(capacity - len(decoded)))
    return _Bytes(backing, len(decoded))


def _u8(token: bytes, pos: int) -> int:
    # strconv.ParseUint(token, 10, 64) then an overflow check against uint8.
    if not token.isdigit() or len(token) > 3 or int(token) > 255:
        raise _error(f"cannot unmarshal number {token[:20]!r} into uint8", pos)
    return int(token)


def _decode(data: bytes, target: int) -> tuple[_KeySlice, _ValueSlice]:
    """Decode ``data`` into a fresh PullResponse (``_T_ROOT``) or PullRequest (``_T_EMPTY``).

    Returns the Keys and Values slices (empty for a PullRequest).
    """
    n = len(data)
    keys = _KeySlice()
    values = _ValueSlice()
    stack: list[_Frame] = []
    # What the value at ``pos`` decodes into: see ``_Target``.
    ref: bytearray | _ValueSlice | None = None
    index = 0
    ws = _skip_ws
    pos = ws(data, 0)

    while True:
        # ---- one value for ``target`` starts at ``pos``
        if pos >= n:
            raise _error("unexpected end of JSON input", pos)
        c = data[pos]
        if c == 0x7B:  # {
            if target not in (_T_ROOT, _T_EMPTY, _T_SKIP):
                raise _error(f"cannot unmarshal object into {_TYPE_NAMES[target]}", pos)
            if len(stack) >= MAX_NESTING_DEPTH:
                raise _error("exceeded max depth", pos)
            frame = _Frame(_F_OBJ_ROOT if target == _T_ROOT else _F_OBJ_SKIP, None)
            pos = ws(data, pos + 1)
            if pos < n and data[pos] == 0x7D:  # }
                pos += 1
            else:
                stack.append(frame)
                pos, target = _member(data, pos, frame)
                continue
        elif c == 0x5B:  # [
            if len(stack) >= MAX_NESTING_DEPTH:
                raise _error("exceeded max depth", pos)
            if target == _T_SKIP:
                frame = _Frame(_F_ARR_SKIP, None)
            elif target == _T_KEYS:
                frame = _Frame(_F_ARR_KEYS, keys)
            elif target == _T_KEY:
                frame = _Frame(_F_ARR_KEY, ref)
            elif target == _T_VALUES:
                frame = _Frame(_F_ARR_VALUES, values)
            elif target == _T_BYTES:
                assert isinstance(ref, _ValueSlice)
                frame = _Frame(_F_ARR_BYTES, ref.backing[index])
            else:
                raise _error(f"cannot unmarshal array into {_TYPE_NAMES[target]}", pos)
            pos = ws(data, pos + 1)
            if pos < n and data[pos] == 0x5D:  # ]
                pos += 1
                _finish_array(frame)
            else:
                stack.append(frame)
                target, ref, index = _element(frame)
                continue
        elif c == 0x22:  # "
            match = _STRING.match(data, pos)
            if match is None:
                raise _error("invalid string literal", pos)
            if target == _T_BYTES:
                assert isinstance(ref, _ValueSlice)
                text = _unquote(data[pos + 1 : match.end() - 1])
                ref.backing[index] = _base64_untrusted(text, pos)
            elif target != _T_SKIP:
                raise _error(f"cannot unmarshal string into {_TYPE_NAMES[target]}", pos)
            pos = match.end()
        elif c == 0x2D or 0x30 <= c <= 0x39:  # - 0-9
            match = _NUMBER.match(data, pos)
            if match is None:
                raise _error("invalid number literal", pos)
            if target == _T_U8:
                assert isinstance(ref, bytearray)
                ref[index] = _u8(match.group(), pos)
            elif target != _T_SKIP:
                raise _error(f"cannot unmarshal number into {_TYPE_NAMES[target]}", pos)
            pos = match.end()
        elif data.startswith(b"null", pos):
            # null: a slice or a []byte becomes nil; a struct, an array or a number keeps its
            # value (Go ignores null for those kinds).
            if target == _T_KEYS:
                keys.backing, keys.length = [], 0
            elif target == _T_VALUES:
                values.backing, values.length = [], 0
            elif target == _T_BYTES:
                assert isinstance(ref, _ValueSlice)
                ref.backing[index] = _Bytes()
            pos += 4
        elif data.startswith(b"true", pos) or data.startswith(b"false", pos):
            if target != _T_SKIP:
                raise _error(f"cannot unmarshal bool into {_TYPE_NAMES[target]}", pos)
            pos += 4 if c == 0x74 else 5
        else:
            raise _error(f"invalid character {data[pos : pos + 1]!r} looking for value", pos)

        # ---- a value ended: close containers or move on to the next element or member
        while True:
            pos = ws(data, pos)
            if not stack:
                if pos != n:
                    raise _error("invalid character after top-level value", pos)
                return keys, values
            if pos >= n:
                raise _error("unexpected end of JSON input", pos)
            frame = stack[-1]
            is_object = frame.kind in (_F_OBJ_ROOT, _F_OBJ_SKIP)
            c = data[pos]
            if c == 0x2C:  # ,
                pos = ws(data, pos + 1)
                if is_object:
                    pos, target = _member(data, pos, frame)
                else:
                    frame.count += 1
                    target, ref, index = _element(frame)
                break
            if (c == 0x7D and is_object) or (c == 0x5D and not is_object):
                stack.pop()
                if not is_object:
                    frame.count += 1
                    _finish_array(frame)
                pos += 1
                continue
            raise _error(f"invalid character {data[pos : pos + 1]!r} in container", pos)


def _member(data: bytes, pos: int, frame: _Frame) -> tuple[int, int]:
    """Parse ``"name":`` at ``pos``; return the position of the value and its target."""
    match = _STRING.match(data, pos)
    if match is None:
        raise _error("invalid character looking for beginning of object key string", pos)
    end = _skip_ws(data, match.end())
    if end >= len(data) or data[end] != 0x3A:  # :
        raise _error("invalid character after object key", end)
    value_pos = _skip_ws(data, end + 1)
    if frame.kind != _F_OBJ_ROOT:
        return value_pos, _T_SKIP
    name = _fold_name(_unquote(data[pos + 1 : match.end() - 1]))
    if name == _KEYS_FOLDED:
        return value_pos, _T_KEYS
    if name == _VALUES_FOLDED:
        return value_pos, _T_VALUES
    return value_pos, _T_SKIP


def _element(frame: _Frame) -> _Target:
    """Prepare element number ``frame.count`` of an array and say what it decodes into.

    Go grows a slice one element at a time and decodes into whatever the backing array
    already holds at that index (a previous decode of the same member may have left it).
    """
    i = frame.count
    ref = frame.ref
    if frame.kind == _F_ARR_SKIP:
        return _T_SKIP, None, 0
    if frame.kind == _F_ARR_KEY:
        assert isinstance(ref, bytearray)
        return (_T_U8, ref, i) if i < 8 else (_T_SKIP, None, 0)
    if frame.kind == _F_ARR_BYTES:
        assert isinstance(ref, _Bytes)
        if i >= ref.length:
            if i >= len(ref.backing):
                ref.backing.append(0)
            ref.length = i + 1
        return _T_U8, ref.backing, i
    if frame.kind == _F_ARR_KEYS:
        assert isinstance(ref, _KeySlice)
        if i >= ref.length:
            if i >= len(ref.backing):
                ref.backing.append(bytearray(8))
            ref.length = i + 1
        return _T_KEY, ref.backing[i], i
    assert isinstance(ref, _ValueSlice)
    if i >= ref.length:
        if i >= len(ref.backing):
            ref.backing.append(_Bytes())
        ref.length = i + 1
    return _T_BYTES, ref, i


def _finish_array(frame: _Frame) -> None:
    """Go's end-of-array rule: zero the rest of a fixed array, truncate a slice to the
    elements received, and replace a slice that received none by a fresh empty one."""
    count = frame.count
    ref = frame.ref
    if isinstance(ref, bytearray):  # [8]byte
        for j in range(count, 8):
            ref[j] = 0
    elif isinstance(ref, _Bytes | _KeySlice | _ValueSlice):
        if count == 0:
            if isinstance(ref, _Bytes):
                ref.backing, ref.length = bytearray(), 0
            else:
                ref.backing, ref.length = [], 0
        elif count < ref.length:
            ref.length = count


def decode_pull_response_body(body: bytes) -> tuple[list[bytes], list[bytes]]:
    """Decode a PullResponse body as Go's ``json.Unmarshal`` into
    ``struct { Keys [][8]byte; Values [][]byte }`` would.

    Args:
        body: the untrusted JSON bytes (already decrypted).

    Returns:
        The final ``Keys`` (each 8 bytes) and ``Values`` lists. Their lengths may differ:
        the caller decides (Go itself panics on that, flaw 2).

    Raises:
        MalformedPacket: for everything Go's decoder rejects (syntax, depth, type, base64).
    """
    canonical = _CANONICAL.fullmatch(body)
    if canonical is not None:
        return _decode_canonical(canonical.group(1), canonical.group(2))
    keys, values = _decode(body, _T_ROOT)
    return (
        [bytes(k) for k in keys.backing[: keys.length]],
        [v.value() for v in values.backing[: values.length]],
    )


def _decode_canonical(keys_text: bytes, values_text: bytes) -> tuple[list[bytes], list[bytes]]:
    numbers = [int(d) for d in _DIGITS.findall(keys_text)]
    if numbers and max(numbers) > 255:
        # Let the general path produce the error (one message for both paths).
        raise _error("cannot unmarshal number into uint8", 0)
    flat = bytes(numbers)
    keys = [flat[i : i + 8] for i in range(0, len(flat), 8)]
    values = []
    for text in _QUOTED.findall(values_text):
        if _BASE64.fullmatch(text) is None:
            raise _error("illegal base64 data", 0)
        values.append(binascii.a2b_base64(text))
    return keys, values


def decode_pull_request_body(body: bytes) -> None:
    """Check a PullRequest body as ``json.Unmarshal`` into an empty struct would: any JSON
    object (members ignored) or ``null``.

    Raises:
        MalformedPacket: when Go's decoder would return an error.
    """
    _decode(body, _T_EMPTY)
