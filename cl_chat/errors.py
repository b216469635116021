"""How both chat entry points end on a problem a user must fix: one `error: …` line, exit 1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class Refused(RuntimeError):
    """A setting the chat cannot start with (the message says which and why)."""


@contextmanager
def user_errors() -> Iterator[None]:
    """No model, wrong salt or a refused setting: a one-line error instead of a traceback."""
    from cl_assets.core.identity import SaltMismatchError
    from cl_assets.core.model import ModelError

    try:
        yield
    except (ModelError, SaltMismatchError, Refused) as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
