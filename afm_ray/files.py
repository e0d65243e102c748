"""Files that readers see whole or not at all.

Every file afm-ray replaces while others may read it (run state, build manifests, molecule databases,
figures MLflow uploads) goes through :func:`atomic_file`: a crash or a concurrent reader meets the old
file or the new one, never half of one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | os.PathLike, text: bool = False) -> Iterator[IO]:
    """A stream whose content replaces ``path`` once the ``with`` block ends without an error.

    The stream writes a temporary file beside ``path`` (same folder, hence same file system), which is
    flushed, fsynced and moved over ``path`` with :func:`os.replace`; on an error it is deleted and
    ``path`` is left as it was. The parent folder is created. ``text``: a UTF-8 text stream without
    newline translation (what :mod:`csv` and JSON want); else a binary one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened exclusively (not mkstemp, whose 0600 mode would survive the rename): the file
    # gets the usual umask permissions, and concurrent writers of one path never share a temporary file
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "x" if text else "xb", **({"encoding": "utf-8", "newline": ""} if text else {})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
