"""
Durable JSON records for the controller's own state (drain intent, rollout
progress, the last good model): written to a temporary file, fsynced, renamed
over the old one and the directory fsynced, with a checksum of the content,
so that a crash leaves either the old record or the new one, and a damaged
file (truncated, edited by hand, a disk error) is *reported* instead of being
read as "nothing recorded".
"""

import dataclasses
import hashlib
import json
import os
import threading
from typing import Any, Optional

FORMAT = "salt-edge-ha/1"


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A record read back: ``data`` (the default when there is none), or ``error`` when it is unreadable."""

    data: Any
    error: Optional[str] = None
    exists: bool = False


def _digest(body):
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def envelope(data):
    """``data`` (JSON-able) in the checksummed envelope every record is stored in: ``{format, sha256, data}``."""
    body = json.dumps(data, sort_keys=True, default=str)
    return {"format": FORMAT, "sha256": _digest(body), "data": json.loads(body)}


def opened(doc, where, what):
    """``Loaded`` of an envelope ``doc`` read from ``where``, its checksum checked (``what`` was damaged if not)."""
    data = doc.get("data")
    if _digest(json.dumps(data, sort_keys=True, default=str)) != doc.get("sha256"):
        return Loaded(None, f"{where}: checksum mismatch ({what} was changed or damaged)", True)
    return Loaded(data, None, True)


def fsync_dir(directory):
    """fsync a directory (a rename in it made durable)."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dump(path, data, mode=0o600):
    """Write ``data`` (JSON-able) to ``path`` durably and atomically, with its checksum."""
    text = json.dumps(envelope(data), indent=1, sort_keys=True)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def load(path, default=None):
    """
    Read a record written by :func:`dump`. A missing file is ``Loaded(default)``;
    an unparsable file or a checksum that does not match is
    ``Loaded(None, error=...)``. A plain JSON file from an earlier version
    (no checksum) is accepted as it is.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return Loaded(default)
    except OSError as exc:
        return Loaded(None, f"{path}: cannot be read: {exc.strerror or exc}", True)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return Loaded(None, f"{path}: not valid JSON ({exc}; {len(text)} bytes)", True)
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT):
        return Loaded(doc, None, True)  # written before records had checksums
    return opened(doc, path, "the file")
