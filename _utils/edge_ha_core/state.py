"""
The controller's state through Salt's cache API (issue #16): drain records,
rollout progress, the last good model, ... as keys of one bank of a
``salt.cache.Cache``, so ``localfs`` (the default, no service) keeps them
under the master's cachedir and a shared backend (redis) gives several
masters one state.

Each value is the same checksummed envelope as ``edge_ha_core.store``'s
files (``{"format", "sha256", "data"}``, as JSON text), whatever the
backend: a damaged value is *reported* (``Loaded.error``), never read as
"nothing recorded". With ``localfs``, the file Salt wrote is fsynced (and
its directory) before ``save`` returns: Salt's localfs renames a temporary
file into place but does not fsync; a crash between the rename and the fsync
can leave an empty file, which reads as unreadable (reported), not as empty.

Records written before this (``<cachedir>/edge_ha/<name>`` files of
``edge_ha_core.store``) are migrated on their first read: the file is read
with its checksum, written as the key, and renamed to ``<name>.migrated``.
An unreadable old file is not migrated: it stays, and reads as its error.
With a shared backend, a record missing there is moved in the same way from
this master's localfs keys (``<name>.p``, renamed ``<name>.p.migrated``),
which themselves come from the old files if need be.

Plain Python: the cache object comes from the caller (the runner passes
``salt.cache.Cache(opts, driver=...)``); tests pass one too.
"""

import dataclasses
import json
import os

from edge_ha_core import store

BANK = "edge_ha"


@dataclasses.dataclass(frozen=True)
class Record:
    """One value as stored: the envelope's text."""

    text: str

    @classmethod
    def of(cls, data):
        return cls(json.dumps(store.envelope(data), sort_keys=True))

    def read(self, where):
        """``store.Loaded`` of this text (the checksum checked)."""
        try:
            doc = json.loads(self.text)
        except ValueError as exc:
            return store.Loaded(None, f"{where}: not valid JSON ({exc}; {len(self.text)} bytes)", True)
        if not (isinstance(doc, dict) and doc.get("format") == store.FORMAT):
            return store.Loaded(None, f"{where}: not a salt-edge-ha record", True)
        return store.opened(doc, where, "the value")


class StoreDown(Exception):
    """The store did not answer (a shared backend that is down): not the same as a missing record."""


class StateStore:
    """
    Records by name in one bank of a Salt cache. ``localfs_dir``: with the
    localfs driver, the directory Salt writes the bank to (fsynced after each
    write). ``legacy_dir``: where records of earlier versions are (migrated
    on first read).
    """

    def __init__(self, cache, bank=BANK, localfs_dir=None, legacy_dir=None, driver="localfs", previous=None):
        self.cache, self.bank, self.driver = cache, bank, driver
        self.localfs_dir, self.legacy_dir = localfs_dir, legacy_dir
        self.previous = previous  # another StateStore a missing record is moved from (localfs, before a switch)

    @classmethod
    def for_opts(cls, opts, cache_class):
        """
        The controller's records for a Salt master's ``opts``: the backend of
        ``edge_ha_cache``, localfs fsynced, old files migrated. ``cache_class``:
        ``salt.cache.Cache`` (passed in: this module imports no Salt). The
        runner uses it, and so can any other reader on the master (an
        ext_pillar reading a record of the runner's).
        """
        settings = Settings.from_opts(opts)
        os.makedirs(settings.directory, exist_ok=True)
        if settings.local:
            return cls(_cache(cache_class, opts, "localfs"), localfs_dir=settings.directory,
                       legacy_dir=settings.directory, driver="localfs")
        # a shared store: records this master kept in localfs before the switch are moved in on first read
        local = cls(_cache(cache_class, opts, "localfs"), localfs_dir=settings.directory,
                    legacy_dir=settings.directory, driver="localfs")
        return cls(_cache(cache_class, opts, settings.driver), driver=settings.driver, previous=local)

    def where(self, name):
        return f"{self.driver}:{self.bank}/{name}"

    def _fetch(self, name):
        try:
            return self.cache.fetch(self.bank, name)
        except Exception as exc:  # pylint: disable=broad-except
            # localfs: a file that is not msgpack; a shared store: down. Both: not "nothing recorded".
            return _Failed(f"{self.where(name)}: cannot be read: {exc}")

    def load(self, name, default=None) -> store.Loaded:
        """The record ``name``: ``Loaded(default)`` when there is none; ``Loaded(None, error)`` when unreadable."""
        raw = self._fetch(name)
        if (raw is None or raw == {}) and self._there(name):
            # Salt's localfs answers {} for a missing file; a writer may have renamed it into place since
            # (its check for the file and its read are two steps): one more read before "damaged"
            raw = self._fetch(name)
        if isinstance(raw, _Failed):
            return store.Loaded(None, raw.error, True)
        if raw is None or raw == {}:
            if self._there(name):
                # Salt's localfs reads an empty or garbled file as {} too: it is there, so it is damaged
                return store.Loaded(None, f"{self.where(name)}: empty or not a record (damaged)", True)
            return self._migrate(name, default)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        if not isinstance(raw, str):
            return store.Loaded(None, f"{self.where(name)}: not a salt-edge-ha record ({type(raw).__name__})", True)
        return Record(raw).read(self.where(name))

    def save(self, name, data):
        """Write ``data`` (JSON-able) as the record ``name``; durable before it returns (localfs: fsynced)."""
        self.cache.store(self.bank, name, Record.of(data).text)
        if self.localfs_dir:
            path = os.path.join(self.localfs_dir, f"{name}.p")
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                fd = None  # deleted since by another writer (a pending trigger taken): its delete is the news
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            store.fsync_dir(self.localfs_dir)

    def _there(self, name):
        """localfs: the key's file exists (an empty answer from Salt then means unreadable, not missing)."""
        return bool(self.localfs_dir) and os.path.exists(os.path.join(self.localfs_dir, f"{name}.p"))

    def delete(self, name):
        """Remove the record (True if there was one)."""
        return bool(self.cache.flush(self.bank, name))

    def retire(self, name):
        """After a move to another store: the localfs file renamed ``<name>.p.migrated`` (kept, not read)."""
        if self.localfs_dir:
            path = os.path.join(self.localfs_dir, f"{name}.p")
            if os.path.exists(path):
                os.replace(path, path + ".migrated")

    def _migrate(self, name, default):
        if self.previous is not None:
            loaded = self.previous.load(name, None)
            if loaded.error:
                return loaded  # unreadable there: reported, never "nothing recorded"
            if not loaded.exists:
                return store.Loaded(default)
            self.save(name, loaded.data)
            self.previous.retire(name)
            return store.Loaded(loaded.data, None, True)
        if not self.legacy_dir:
            return store.Loaded(default)
        path = os.path.join(self.legacy_dir, name)
        if not os.path.isfile(path):
            return store.Loaded(default)
        loaded = store.load(path, default)
        if loaded.error:
            return loaded  # reported as it is; the file stays for the operator
        self.save(name, loaded.data)
        os.replace(path, path + ".migrated")
        return store.Loaded(loaded.data, None, True)


def _cache(cache_class, opts, driver):
    """
    A ``cache_class`` (``salt.cache.Cache``) on ``driver``. Salt 3008 takes
    the driver as an argument; Salt 3006 and 3007 ignore that argument and
    read ``opts["cache"]`` (Salt's own cache: option), which would put the
    records in localfs with ``edge_ha_cache: redis`` (or in redis with
    ``cache: redis`` and the default ``edge_ha_cache``): both are set.
    """
    return cache_class(dict(opts, cache=driver), driver=driver)


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the controller's state is (from the master config): ``edge_ha_cache`` and the lease's TTL."""

    driver: str
    lease_ttl: float
    cachedir: str

    @classmethod
    def from_opts(cls, opts):
        driver = str(opts.get("edge_ha_cache") or "localfs")
        ttl = float(opts.get("edge_ha_lease_ttl", 30))
        if not ttl > 0:
            raise ValueError(f"edge_ha_lease_ttl must be a positive number of seconds, not {ttl!r}")
        return cls(driver, ttl, opts["cachedir"])

    @property
    def directory(self):
        """``<cachedir>/edge_ha``: the localfs bank, the records of earlier versions, the local lease file."""
        return os.path.join(self.cachedir, BANK)

    @property
    def local(self):
        return self.driver == "localfs"
