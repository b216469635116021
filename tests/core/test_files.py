"""Atomic writes: a file or folder appears whole or not at all, and is replaced only when asked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cl_assets.core.files import atomic_directory, atomic_write_bytes


def test_a_failed_block_leaves_nothing_and_a_good_one_leaves_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        assert tmp.name.startswith(".out.tmp-") and not target.exists()
        (tmp / "a").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "a").read_text() == "1"


def test_an_existing_folder_is_kept_unless_replace_is_asked(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("0")
    with pytest.raises(FileExistsError), atomic_directory(target):
        pass
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["new"]


def test_a_folder_that_appears_meanwhile_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared"), atomic_directory(target) as tmp:
        (tmp / "mine").write_text("1")
        target.mkdir()  # someone else's, still empty
    assert list(target.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_bytes_returns_the_hash_of_what_it_wrote(tmp_path: Path) -> None:
    chunks = [b"first line\n", memoryview(b"second line\n"), b"", b"x" * 300_000]
    path = tmp_path / "out.jsonl"
    digest = atomic_write_bytes(path, iter(chunks))
    assert path.read_bytes() == b"".join(bytes(c) for c in chunks)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_atomic_write_bytes_keeps_the_old_file_when_a_chunk_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"old\n")

    def chunks():
        yield b"new\n"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, chunks())
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
