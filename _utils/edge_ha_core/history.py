"""
Bounded records of what happened: events, history, counters (issue #12).

Everything here is plain Python (no Salt), for the runner and the reactor:

``bound_event(data)``
    a copy of an event's data with every part bounded: ids (128 characters),
    tags (256), other strings (1024), dict keys (128), nesting depth, items
    per list or mapping, and the size of the whole. An accepted minion can put
    anything in an event; nothing it sends is recorded unbounded.

``HistoryLog(path, max_bytes, keep_files)``
    JSON lines appended under an ``flock``; when the file would grow past
    ``max_bytes`` it is rotated (``path`` -> ``path.1`` -> ``path.2`` ...,
    ``keep_files`` rotated files kept), so the history never takes more than
    ``(keep_files + 1) * max_bytes`` bytes. ``read()`` returns entries newest
    first across the files and skips a truncated or garbled line (a crash in
    the middle of a write).

``Counters(path)``
    monotonic counters (Prometheus counters) persisted on their own, atomically
    (temporary file, fsync, rename, directory fsync), never derived from the
    trimmed history, so they never go down.
"""

import contextlib
import fcntl
import json
import os
import tempfile

MAX_ID = 128
MAX_TAG = 256
MAX_STRING = 1024
MAX_KEY = 128
MAX_DEPTH = 6
MAX_ITEMS = 64
MAX_EVENT_BYTES = 16384
ELLIPSIS = "..."

ID_KEYS = ("id", "minion", "node", "jid")
TAG_KEYS = ("tag", "_stamp")


def _text(value, limit):
    return value if len(value) <= limit else value[: limit - len(ELLIPSIS)] + ELLIPSIS


def _bound(value, depth, limit=MAX_STRING):
    if value is None or isinstance(value, (bool, int, float)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            return _text(str(value), 32)
        return value
    if isinstance(value, str):
        return _text(value, limit)
    if isinstance(value, bytes):
        return _text(value.decode("utf-8", "replace"), limit)
    if depth >= MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, dict):
        out = {}
        for i, (key, item) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                out["_truncated_items"] = len(value) - MAX_ITEMS
                break
            key = _text(key if isinstance(key, str) else str(key), MAX_KEY)
            out[key] = _bound(item, depth + 1, _limit_for(key))
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        out = [_bound(item, depth + 1) for item in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            out.append(f"<{len(items) - MAX_ITEMS} more items>")
        return out
    return _text(repr(value), limit)


def _limit_for(key):
    if key in ID_KEYS:
        return MAX_ID
    if key in TAG_KEYS:
        return MAX_TAG
    return MAX_STRING


def bound_event(data, tag=None):
    """
    A new dict: ``data`` (an event's data; anything) with every part bounded.
    With ``tag``, it is recorded (bounded) under ``"tag"``. If the bounded
    data is still larger than ``MAX_EVENT_BYTES`` as JSON, only its id, tag and
    the size are kept.
    """
    if not isinstance(data, dict):
        data = {"data": data}
    out = _bound(data, 0)
    if tag is not None:
        out["tag"] = _text(str(tag), MAX_TAG)
    size = len(json.dumps(out, default=str))
    if size > MAX_EVENT_BYTES:
        out = {key: out[key] for key in ID_KEYS + TAG_KEYS if isinstance(out.get(key), str)}
        out["_truncated_bytes"] = size
    return out


@contextlib.contextmanager
def _locked(path):
    """An exclusive flock on ``path`` + ``.lock`` (a separate file: the data files get renamed)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _fsync_dir(directory):
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HistoryLog:
    """JSON lines, bounded in bytes, rotated; see the module docstring."""

    def __init__(self, path, max_bytes=1024 * 1024, keep_files=2):
        if max_bytes < 1024 or keep_files < 1:
            raise ValueError("HistoryLog needs max_bytes >= 1024 and keep_files >= 1")
        self.path = path
        self.max_bytes = max_bytes
        self.keep_files = keep_files

    def files(self):
        """The files, newest first (those that exist)."""
        names = [self.path] + [f"{self.path}.{i}" for i in range(1, self.keep_files + 1)]
        return [name for name in names if os.path.exists(name)]

    def append(self, entry):
        """Append one entry (a dict, bounded with ``bound_event``); rotates first when the file would grow too big."""
        line = (json.dumps(bound_event(entry), default=str, separators=(",", ":")) + "\n").encode()
        if len(line) > self.max_bytes:  # cannot happen with the bounds above unless max_bytes is tiny
            raise ValueError(f"history entry of {len(line)} bytes exceeds max_bytes {self.max_bytes}")
        with _locked(self.path):
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
                size = 0
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                if size and not self._ends_with_newline():
                    line = b"\n" + line  # a torn last line stays a line of its own (skipped by read)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _ends_with_newline(self):
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def _rotate(self):
        oldest = f"{self.path}.{self.keep_files}"
        if os.path.exists(oldest):
            os.unlink(oldest)
        for i in range(self.keep_files - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        _fsync_dir(os.path.dirname(self.path))

    def read(self, limit=None):
        """Entries newest first across the files; lines that are not a JSON object are skipped."""
        out = []
        with _locked(self.path):
            for name in self.files():
                try:
                    with open(name, "rb") as fh:
                        lines = fh.read().splitlines()
                except FileNotFoundError:
                    continue
                for raw in reversed(lines):
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(entry, dict):
                        out.append(entry)
                        if limit is not None and len(out) >= limit:
                            return out
        return out


class Counters:
    """Monotonic counters persisted atomically in one JSON file; see the module docstring."""

    def __init__(self, path):
        self.path = path

    def _load(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            # never start again from 0: a counter that goes down is worse than a loud error
            raise ValueError(f"counters file {self.path} is not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(data, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()):
            raise ValueError(f"counters file {self.path} does not hold a mapping of name -> count")
        return data

    def values(self):
        """``{name: count}``."""
        with _locked(self.path):
            return self._load()

    def bump(self, *names, by=1):
        """Add ``by`` (>= 0) to each counter in ``names`` (created at 0); returns the new values of all counters."""
        if not _is_count(by):
            raise ValueError(f"counters only go up: by must be an integer >= 0, got {by!r}")
        for name in names:
            if not isinstance(name, str) or not 0 < len(name) <= MAX_KEY:
                raise ValueError(f"counter name must be a string of 1-{MAX_KEY} characters, got {name!r:.80}")
        with _locked(self.path):
            data = self._load()
            for name in names:
                data[name] = data.get(name, 0) + by
            self._store(data)
            return dict(data)

    def _store(self, data):
        directory = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
