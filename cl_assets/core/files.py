"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path


def atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write lines to a temp file beside `path`, fsync, then rename over it."""
    atomic_write_bytes(path, ((line + "\n").encode("utf-8") for line in lines))


def atomic_write_bytes(path: Path, chunks: Iterable[bytes | memoryview]) -> str:
    """Write chunks of bytes to a temp file beside `path`, fsync, then rename over it; returns
    the SHA-256 (hex) of the bytes written.

    Each chunk is written and hashed on a second thread while the iterable makes the next one
    (file writes and hashlib release the GIL): a snapshot's lines are encoded while the previous
    slice goes to disk, and the file need not be read back to be hashed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as fh, ThreadPoolExecutor(max_workers=1, thread_name_prefix="cl-write") as writer:

            def put(chunk: bytes | memoryview) -> None:
                fh.write(chunk)
                digest.update(chunk)

            pending: Future[None] | None = None
            for chunk in chunks:
                if pending is not None:
                    pending.result()  # at most one chunk waiting: memory stays two chunks
                pending = writer.submit(put, chunk)
            if pending is not None:
                pending.result()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_lines(path, [text.removesuffix("\n")])


@contextmanager
def atomic_directory(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `target`; it becomes `target` only if the block succeeds.

    A killed or failed block never leaves a folder that looks complete (the temp folder is a
    dot-file). Without `replace` an existing `target` is never overwritten, also one that
    appeared while the block ran; with it, the old folder is swapped out once the new one is
    complete, then deleted.
    """
    target = Path(target)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if not target.exists():
            os.rename(tmp, target)
        elif replace:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old)  # onto an empty folder: allowed, and atomic
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            raise FileExistsError(f"{target} appeared meanwhile; not replacing it")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
