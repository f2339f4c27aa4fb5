"""The controller's records through Salt's cache API (issue #16): localfs through salt.cache, checksums, migration."""

import os

import pytest
import salt.cache
import salt.config

from edge_ha_core import state
from edge_ha_core import store


@pytest.fixture
def opts(tmp_path):
    opts = salt.config.DEFAULT_MASTER_OPTS.copy()
    opts["cachedir"] = str(tmp_path)
    return opts


def localfs(opts):
    settings = state.Settings.from_opts(opts)
    return state.StateStore(salt.cache.Cache(opts, driver="localfs"), localfs_dir=settings.directory,
                            legacy_dir=settings.directory)


def test_round_trip_through_salt_localfs_under_the_cachedir(opts, tmp_path):
    records = localfs(opts)
    assert records.load("drained.json", {}) == store.Loaded({})
    records.save("drained.json", {"edge1": {"reason": "kernel", "since": 1.5, "source": "manual"}})
    assert os.path.isfile(tmp_path / "edge_ha" / "drained.json.p")  # Salt's localfs layout: <cachedir>/<bank>/<key>.p
    loaded = localfs(opts).load("drained.json", {})
    assert loaded == store.Loaded({"edge1": {"reason": "kernel", "since": 1.5, "source": "manual"}}, None, True)
    assert records.delete("drained.json") and records.load("drained.json", None) == store.Loaded(None)


def test_a_damaged_value_is_reported_not_read_as_nothing(opts, tmp_path):
    records = localfs(opts)
    records.save("drained.json", {"edge1": {}})
    path = tmp_path / "edge_ha" / "drained.json.p"
    cache = salt.cache.Cache(opts, driver="localfs")
    text = cache.fetch("edge_ha", "drained.json")
    cache.store("edge_ha", "drained.json", text.replace("edge1", "edge2"))  # edited: checksum no longer matches
    loaded = records.load("drained.json", {})
    assert loaded.data is None and "checksum mismatch" in loaded.error
    path.write_bytes(b"\xc1\xc1 not msgpack")
    loaded = records.load("drained.json", {})
    assert loaded.data is None and loaded.error
    path.write_bytes(b"")  # a crash between Salt's rename and our fsync
    loaded = records.load("drained.json", {})
    assert loaded.data is None and loaded.error
    cache.store("edge_ha", "drained.json", {"edge1": {}})  # a value of another writer
    assert "not a salt-edge-ha record" in records.load("drained.json", {}).error
    cache.store("edge_ha", "drained.json", "{}")
    assert "not a salt-edge-ha record" in records.load("drained.json", {}).error


def test_records_of_earlier_versions_are_migrated_once(opts, tmp_path):
    directory = tmp_path / "edge_ha"
    directory.mkdir()
    store.dump(str(directory / "drained.json"), {"edge2": {"reason": "old", "since": 1, "source": "manual"}})
    (directory / "owners.json").write_text('{"198.18.0.10": "edge1"}')  # plain JSON, before checksums
    records = localfs(opts)
    assert records.load("drained.json", {}).data == {"edge2": {"reason": "old", "since": 1, "source": "manual"}}
    assert not (directory / "drained.json").exists() and (directory / "drained.json.migrated").exists()
    assert (directory / "drained.json.p").exists()
    assert records.load("owners.json", {}).data == {"198.18.0.10": "edge1"}
    # the key now wins, the old file is not read again
    records.save("drained.json", {})
    assert records.load("drained.json", {}).data == {}


def test_an_unreadable_old_record_is_reported_and_left_in_place(opts, tmp_path):
    directory = tmp_path / "edge_ha"
    directory.mkdir()
    (directory / "drained.json").write_text('{"format": "salt-edge-ha/1", "sha256": "00", "data": {}}')
    loaded = localfs(opts).load("drained.json", {})
    assert loaded.data is None and "checksum mismatch" in loaded.error
    assert (directory / "drained.json").exists() and not (directory / "drained.json.p").exists()


class DownCache:
    def fetch(self, bank, key):
        raise ConnectionError("redis: connection refused")

    def store(self, bank, key, data):
        raise ConnectionError("redis: connection refused")


def test_a_store_that_does_not_answer_is_an_error_not_an_empty_record():
    records = state.StateStore(DownCache(), driver="redis")
    loaded = records.load("drained.json", {})
    assert loaded.data is None and "redis:edge_ha/drained.json: cannot be read" in loaded.error
    with pytest.raises(ConnectionError):
        records.save("drained.json", {})


def test_settings_from_the_master_config(tmp_path):
    settings = state.Settings.from_opts({"cachedir": str(tmp_path)})
    assert (settings.driver, settings.lease_ttl, settings.local) == ("localfs", 30.0, True)
    assert settings.directory == str(tmp_path / "edge_ha")
    settings = state.Settings.from_opts({"cachedir": "/c", "edge_ha_cache": "redis", "edge_ha_lease_ttl": 12,
                                         "cache": "consul"})
    assert (settings.driver, settings.lease_ttl, settings.local) == ("redis", 12.0, False)  # Salt's cache: not followed
    with pytest.raises(ValueError, match="edge_ha_lease_ttl"):
        state.Settings.from_opts({"cachedir": "/c", "edge_ha_lease_ttl": 0})


def test_switching_to_a_shared_store_moves_the_localfs_records_in(opts, tmp_path):
    local = localfs(opts)
    local.save("drained.json", {"edge1": {"reason": "r", "since": 1.0, "source": "manual"}})
    directory = tmp_path / "edge_ha"
    store.dump(str(directory / "rollout_failed.json"), {"edge3": {"hash": "abc"}})  # still an old file
    shared_opts = dict(opts, cachedir=str(tmp_path / "shared"))  # another localfs stands in for the shared store
    shared = state.StateStore(salt.cache.Cache(shared_opts, driver="localfs"), driver="redis", previous=local)
    assert shared.load("drained.json", {}).data == {"edge1": {"reason": "r", "since": 1.0, "source": "manual"}}
    assert not (directory / "drained.json.p").exists() and (directory / "drained.json.p.migrated").exists()
    assert shared.load("rollout_failed.json", {}).data == {"edge3": {"hash": "abc"}}
    assert (directory / "rollout_failed.json.migrated").exists() and (directory / "rollout_failed.json.p.migrated").exists()
    assert shared.load("owners.json", {"none": 1}).data == {"none": 1}
    shared.save("drained.json", {})
    assert shared.load("drained.json", None).data == {}


def test_an_unreadable_local_record_stays_an_error_after_the_switch(opts, tmp_path):
    local = localfs(opts)
    local.save("drained.json", {"edge1": {}})
    (tmp_path / "edge_ha" / "drained.json.p").write_bytes(b"")
    shared_opts = dict(opts, cachedir=str(tmp_path / "shared"))
    shared = state.StateStore(salt.cache.Cache(shared_opts, driver="localfs"), driver="redis", previous=local)
    loaded = shared.load("drained.json", {})
    assert loaded.data is None and "damaged" in loaded.error


def test_for_opts_chains_a_shared_backend_to_the_local_records(tmp_path):
    records = state.StateStore.for_opts({"cachedir": str(tmp_path), "edge_ha_cache": "redis"},
                                        lambda opts, driver: driver)
    assert (records.cache, records.driver, records.localfs_dir) == ("redis", "redis", None)
    assert (records.previous.cache, records.previous.localfs_dir) == ("localfs", str(tmp_path / "edge_ha"))
    local = state.StateStore.for_opts({"cachedir": str(tmp_path)}, lambda opts, driver: driver)
    assert local.previous is None and local.localfs_dir == str(tmp_path / "edge_ha")


def test_a_record_written_between_salts_two_looks_is_read_not_called_damaged(opts):
    # Salt's localfs fetch checks for the file, then reads it: a writer renaming it into place in between made the
    # first answer {} with the file there, which read as "damaged" (an unreadable drain record reads as drained)
    records = localfs(opts)
    records.save("reconcile.pending", {"source": "first"})
    first, fetch = [{}], records.cache.fetch
    records.cache.fetch = lambda bank, key: first.pop() if first else fetch(bank, key)
    assert records.load("reconcile.pending", None) == store.Loaded({"source": "first"}, None, True)


def test_a_save_whose_record_was_deleted_meanwhile_is_not_an_error(opts, monkeypatch):
    records = localfs(opts)
    store_ = records.cache.store

    def store_then_taken(bank, key, data):
        store_(bank, key, data)
        records.delete(key)  # another thread took the pending trigger at once

    monkeypatch.setattr(records.cache, "store", store_then_taken)
    records.save("reconcile.pending", {"source": "x"})
    assert records.load("reconcile.pending", None) == store.Loaded(None)
