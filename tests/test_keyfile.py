from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gossip.cli import main
from gossip.crypto import generate_key, key_id_of
from gossip.errors import LocalProtocolError
from gossip.keyfile import read_key_file, write_key_file


def test_keygen_writes_a_private_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.key"
    with pytest.raises(SystemExit) as done:
        main(["keygen", str(path)])
    assert done.value.code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = read_key_file(path)
    assert len(ring) == 1
    with pytest.raises(SystemExit) as done:  # never overwrites a key by accident
        main(["keygen", str(path)])
    assert done.value.code == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_several_keys_first_is_primary(tmp_path: Path) -> None:
    a, b = generate_key(), generate_key()
    path = tmp_path / "k"
    path.write_text(f"# rotation in progress\n{b.hex()}\n\n{a.hex()}  # old\n")
    path.chmod(0o600)
    ring = read_key_file(path)
    assert ring.key_ids() == [key_id_of(b), key_id_of(a)]


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "no key"), ("abcd\n", "64 hex digits"), ("zz" * 32 + "\n", "64 hex digits")],
)
def test_bad_key_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(LocalProtocolError, match=match):
        read_key_file(path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(LocalProtocolError, match="chmod 600"):
        read_key_file(path)
    with pytest.raises(LocalProtocolError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_force_overwrite_resets_mode(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("old")
    path.chmod(0o644)
    key = write_key_file(path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path).primary.key_id == key_id_of(key)
