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
import time

from edge_ha_core import store

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
        store.fsync_dir(os.path.dirname(self.path))

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
        _check_bump(names, by)
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
        store.fsync_dir(directory)


def _check_bump(names, by):
    """ValueError unless ``by`` is a count (>= 0) and every name a string of 1..MAX_KEY characters."""
    if not _is_count(by):
        raise ValueError(f"counters only go up: by must be an integer >= 0, got {by!r}")
    for name in names:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_KEY:
            raise ValueError(f"counter name must be a string of 1-{MAX_KEY} characters, got {name!r:.80}")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ------------------------------------------------------------------ through the controller's store (issue #16)


class StoreHistory:
    """
    The history as records of an ``edge_ha_core.state.StateStore`` (Salt's
    cache: localfs by default, or a store several masters share), bounded
    like :class:`HistoryLog`: at most ``(keep_files + 1) * max_bytes`` bytes
    of JSON lines. The entries are kept in segments (``history.<n>``, each
    ``{"entries", "bytes"}``; ``history.head`` names the newest), several per
    ``max_bytes`` when it is large enough (each at least twice the largest
    bounded entry), so an append rewrites one small segment, not the whole
    log. Appends are serialized by ``mutex`` (a short lease in the same
    store: across masters too). An unreadable segment is skipped on read
    (as a garbled line is) and a new one is started on append.

    ``legacy_path``: the ``reconcile.log`` of an earlier version; its entries
    (and those of its rotated files) are moved in on first use and the files
    renamed to ``.migrated``.
    """

    HEAD = "history.head"

    def __init__(self, records, mutex, max_bytes=1024 * 1024, keep_files=2, legacy_path=None, log=None):
        if max_bytes < 1024 or keep_files < 1:
            raise ValueError("StoreHistory needs max_bytes >= 1024 and keep_files >= 1")
        self.records, self.mutex = records, mutex
        self.max_bytes, self.keep_files = max_bytes, keep_files
        per_file = max(1, min(32, max_bytes // (2 * MAX_EVENT_BYTES)))
        self.segment_bytes = max_bytes // per_file
        self.keep_segments = (keep_files + 1) * per_file
        self.legacy_path = legacy_path
        self.log = log

    @staticmethod
    def segment(number):
        return f"history.{number}"

    def _warn(self, message):
        if self.log:
            self.log.warning("edge_ha history: %s", message)

    def _head(self):
        """The newest segment's number, or None if there is no history; ValueError when unreadable."""
        loaded = self.records.load(self.HEAD, None)
        if loaded.error:
            raise ValueError(loaded.error)
        if loaded.data is None:
            return None
        number = loaded.data.get("segment") if isinstance(loaded.data, dict) else None
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"{self.HEAD}: not a segment number: {loaded.data!r:.80}")
        return number

    def _segment(self, number):
        """``(entries, bytes)`` of a segment, or None when missing or unreadable."""
        loaded = self.records.load(self.segment(number), None)
        if loaded.error:
            self._warn(loaded.error)
            return None
        data = loaded.data
        if not (isinstance(data, dict) and isinstance(data.get("entries"), list) and isinstance(data.get("bytes"), int)):
            return None
        return data["entries"], data["bytes"]

    def append(self, entry):
        """Append one entry (bounded with ``bound_event``)."""
        self.extend([entry])

    def extend(self, entries):
        lines = [(e, len(json.dumps(e, default=str, separators=(",", ":"))) + 1)
                 for e in (bound_event(x) for x in entries)]
        for _, size in lines:
            if size > self.max_bytes:
                raise ValueError(f"history entry of {size} bytes exceeds max_bytes {self.max_bytes}")
        with self.mutex():
            try:
                head = self._head()
            except ValueError as exc:
                self._warn(f"{exc}; a new segment is started")
                head = int(time.time() * 1000)
                self.records.save(self.HEAD, {"segment": head})
            if head is None:
                head = self._head() if self._migrate() else None
                if head is None:
                    head = 0
                    self.records.save(self.HEAD, {"segment": 0})
            current = self._segment(head)
            entries, used = current if current is not None else ([], 0)
            if current is None and self.records.load(self.segment(head), None).exists:
                head, entries, used = self._next(head)  # unreadable: left to be trimmed, not written over
            for entry, size in lines:
                if entries and used + size > self.segment_bytes:
                    self._save(head, entries, used)
                    head, entries, used = self._next(head)
                entries.append(entry)
                used += size
            self._save(head, entries, used)

    def _next(self, head):
        """Start segment head+1 (the head record first: a crash leaves it empty, not lost) and drop the oldest."""
        head += 1
        self.records.save(self.HEAD, {"segment": head})
        old = head - self.keep_segments
        if old >= 0:
            self.records.delete(self.segment(old))
        return head, [], 0

    def _save(self, number, entries, used):
        self.records.save(self.segment(number), {"entries": entries, "bytes": used})

    def read(self, limit=None):
        """Entries newest first across the segments; an unreadable segment is skipped."""
        try:
            head = self._head()
        except ValueError as exc:
            self._warn(str(exc))
            return []
        if head is None:
            if self.legacy_path and os.path.exists(self.legacy_path):
                return HistoryLog(self.legacy_path, self.max_bytes, self.keep_files).read(limit)  # not migrated yet
            return []
        out = []
        for number in range(head, max(-1, head - self.keep_segments), -1):
            segment = self._segment(number)
            if segment is None:
                continue
            for entry in reversed(segment[0]):
                if isinstance(entry, dict):
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def _migrate(self):
        """Move the entries of an earlier version's ``reconcile.log`` files in (mutex held, no head yet)."""
        if not self.legacy_path:
            return False
        old = HistoryLog(self.legacy_path, self.max_bytes, self.keep_files)
        files = old.files()
        if not files:
            return False
        entries = list(reversed(old.read()))
        head, used, current = 0, 0, []
        self.records.save(self.HEAD, {"segment": 0})
        for entry in entries:
            size = len(json.dumps(entry, default=str, separators=(",", ":"))) + 1
            if current and used + size > self.segment_bytes:
                self._save(head, current, used)
                head, current, used = head + 1, [], 0
            current.append(entry)
            used += size
        self._save(head, current, used)
        self.records.save(self.HEAD, {"segment": head})
        for number in range(0, head - self.keep_segments + 1):
            self.records.delete(self.segment(number))
        for name in files:
            os.replace(name, name + ".migrated")
        return True


class StoreCounters:
    """
    Monotonic counters as one record of an ``edge_ha_core.state.StateStore``,
    bumped under ``mutex``. An unreadable record is an error (ValueError),
    never a restart from 0. The ``counters.json`` of an earlier version is
    migrated by the store on first read.
    """

    NAME = "counters.json"

    def __init__(self, records, mutex):
        self.records, self.mutex = records, mutex

    def _load(self):
        loaded = self.records.load(self.NAME, {})
        if loaded.error:
            raise ValueError(f"counters unreadable ({loaded.error}); fix or remove the record")
        data = loaded.data
        if not isinstance(data, dict) or not all(_is_count(v) for v in data.values()):
            raise ValueError(f"counters record {self.NAME} does not hold a mapping of name -> count")
        return data

    def values(self):
        return self._load()

    def bump(self, *names, by=1):
        _check_bump(names, by)
        with self.mutex():
            data = self._load()
            for name in names:
                data[name] = data.get(name, 0) + by
            self.records.save(self.NAME, data)
            return dict(data)
