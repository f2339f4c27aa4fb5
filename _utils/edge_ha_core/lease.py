"""
A lease with expiry: one holder at a time across masters (issue #16), for the
controller's reconcile/drain/undrain, kept in the same store as its state.

Salt's cache API (``salt.cache``) has no compare-and-set, so each store
backend gives one atomic primitive of its own, and everything else is the
pure logic below, the same for every backend:

``backend.now()``
    the store's clock (seconds): the local clock for ``localfs`` (one
    machine), the server's ``TIME`` for redis, so masters whose clocks differ
    still agree on when a lease expired;
``backend.read()``
    the lease record as text, or None;
``backend.cas(expected, new)``
    write ``new`` only if the record is still ``expected`` (None: absent);
    True if it wrote. ``localfs``: under an ``flock`` of a lock file, then a
    rename (no fsync: see ``FileBackend.cas``); redis: one Lua script.

The record is never deleted: a release writes it with no token, so the
generation (the fencing token) survives and only goes up. A holder that dies
stops renewing; once ``expires`` (store clock) has passed, another claimant
takes the lease with the next generation. On the same host, a holder whose
process is gone (pid and its start time, from ``/proc``) frees the lease at
once: a master restarted after a crash does not wait out the TTL.

What this cannot do (said in docs/operations.md): a holder paused longer than
the TTL (a frozen VM, a stopped process) may still act for a moment before it
notices at its next renewal or write check that the lease moved on; between
two checks nothing stops it. The generation tells the records' readers who
wrote them.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import socket
import threading
import time
import weakref
from typing import Optional

FORMAT = "salt-edge-ha-lease/1"


class LeaseError(Exception):
    """The lease could not be acquired, renewed or checked."""


class LeaseLost(LeaseError):
    """The lease this process held expired and another holder may have it: stop acting."""


class UnsupportedBackend(LeaseError):
    """The store backend has no atomic primitive for a lease here."""


@dataclasses.dataclass(frozen=True)
class Claimant:
    """Who asks: a random token per acquisition, and the process (for the same-host liveness check)."""

    token: str
    host: str
    pid: int
    pid_start: str
    what: str = ""

    @classmethod
    def this_process(cls, what=""):
        pid = os.getpid()
        return cls(secrets.token_hex(16), socket.gethostname(), pid, process_start(pid) or "", what)


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lease record. ``token`` empty: free (released). ``expires``/``acquired``: store clock."""

    token: str = ""
    generation: int = 0
    expires: float = 0.0
    acquired: float = 0.0
    host: str = ""
    pid: int = 0
    pid_start: str = ""
    what: str = ""

    def to_text(self):
        return json.dumps(dict(dataclasses.asdict(self), format=FORMAT), sort_keys=True)

    @classmethod
    def from_text(cls, text):
        """The record; ValueError if it is not one."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a lease record")
        fields = {f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc}
        lease = cls(**fields)
        if not (isinstance(lease.generation, int) and isinstance(lease.expires, (int, float))
                and isinstance(lease.token, str)):
            raise ValueError("lease record with fields of the wrong type")
        return lease


def parse(text):
    """``(lease or None, error or None)``: None and None when there is no record."""
    if text is None:
        return None, None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        return Lease.from_text(text), None
    except (ValueError, TypeError) as exc:
        return None, f"unreadable lease record ({exc}): {text[:80]!r}"


# ------------------------------------------------------------------ predicates


def is_free(lease):
    """No record, or released."""
    return lease is None or not lease.token


def expired(lease, now):
    """Held, and its expiry (store clock) has passed."""
    return lease is not None and bool(lease.token) and lease.expires <= now


def ours(lease, claimant):
    """Held with this claimant's token."""
    return lease is not None and bool(lease.token) and lease.token == claimant.token


def holder_gone_here(lease, host, alive):
    """Held by a process on ``host`` that no longer runs (``alive(pid, pid_start)``): free at once."""
    return (lease is not None and bool(lease.token) and bool(lease.host) and lease.host == host
            and lease.pid > 0 and not alive(lease.pid, lease.pid_start))


def next_generation(lease, now):
    """The fencing token of the next holder: one more than the last, and never below the store clock in ms
    (so it still goes up if the record itself was lost or damaged)."""
    return max((lease.generation if lease else 0) + 1, int(now * 1000))


def lease_gone(renewed, now, ttl):
    """Our last successful renewal (our monotonic clock) is a TTL old: the store may have given the lease away."""
    return now - renewed >= ttl


@dataclasses.dataclass(frozen=True)
class Decision:
    take: bool
    why: str


def decide(current, error, now, claimant, alive):
    """May ``claimant`` write a new lease over ``current`` (``error``: the record was unreadable)?"""
    if error:
        return Decision(True, error + "; taken over")
    if is_free(current):
        return Decision(True, "free")
    if ours(current, claimant):
        return Decision(True, "ours")
    if expired(current, now):
        return Decision(True, f"expired {now - current.expires:.1f}s ago (holder {current.host} pid {current.pid})")
    if holder_gone_here(current, claimant.host, alive):
        return Decision(True, f"holder pid {current.pid} on this host is gone")
    return Decision(False, f"held by {current.host} pid {current.pid} ({current.what or 'reconcile'}), "
                           f"generation {current.generation}, for {current.expires - now:.1f}s more")


def claimed(current, claimant, now, ttl):
    """The record ``claimant`` writes to take (or keep) the lease: same generation when already ours."""
    generation = current.generation if ours(current, claimant) else next_generation(current, now)
    acquired = current.acquired if ours(current, claimant) else now
    return Lease(claimant.token, generation, now + ttl, acquired, claimant.host, claimant.pid,
                 claimant.pid_start, claimant.what)


def released(current):
    """The record after a release: free, generation kept."""
    return Lease("", current.generation, 0.0, 0.0)


# ------------------------------------------------------------------ processes


def process_start(pid):
    """The start time of ``pid`` (clock ticks since boot, from /proc) as text, or None if it does not run
    (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:
        fields = stat[stat.rindex(")") + 2:].split()
    except ValueError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # a zombie (killed, not reaped yet) holds nothing
    return fields[19]


def process_alive(pid, pid_start):
    """``pid`` runs and is the same process (same start time; pid reuse is not mistaken for it)."""
    start = process_start(pid)
    return start is not None and (not pid_start or start == pid_start)


# ------------------------------------------------------------------ operations


@dataclasses.dataclass(frozen=True)
class Attempt:
    lease: Optional[Lease]  # the record written (ours), or None
    current: Optional[Lease]  # what was there
    why: str


def try_acquire(backend, claimant, ttl, alive=process_alive):
    """One attempt to take the lease: read, decide, compare-and-set."""
    raw = backend.read()
    current, error = parse(raw)
    now = backend.now()
    decision = decide(current, error, now, claimant, alive)
    if not decision.take:
        return Attempt(None, current, decision.why)
    new = claimed(None if error else current, claimant, now, ttl)
    if error:
        new = dataclasses.replace(new, generation=max(new.generation, int(now * 1000)))
    if backend.cas(raw, new.to_text()):
        return Attempt(new, current, decision.why)
    return Attempt(None, current, "another claimant wrote the lease first")


def renew(backend, claimant, ttl):
    """Extend our lease; LeaseLost if it is not ours any more (or expired: another may have taken it)."""
    raw = backend.read()
    current, error = parse(raw)
    now = backend.now()
    if error or not ours(current, claimant):
        raise LeaseLost(f"the reconcile lease is not ours any more ({error or describe(current, now)})")
    if expired(current, now):
        raise LeaseLost(f"the reconcile lease expired {now - current.expires:.1f}s ago (renewed too late)")
    new = claimed(current, claimant, now, ttl)
    if not backend.cas(raw, new.to_text()):
        raise LeaseLost("the reconcile lease changed while it was renewed")
    return new


def release(backend, claimant):
    """Free the lease if it is still ours; True if it was."""
    raw = backend.read()
    current, _ = parse(raw)
    if not ours(current, claimant):
        return False
    return backend.cas(raw, released(current).to_text())


def describe(lease, now):
    if is_free(lease):
        return "free"
    state = "expired" if expired(lease, now) else f"{lease.expires - now:.1f}s left"
    return f"holder {lease.host} pid {lease.pid} ({lease.what}), generation {lease.generation}, {state}"


def _renew_loop(holder, stop, backend, claimant, ttl):
    """
    Renew ``claimant``'s lease every TTL/3 while its ``Holding`` (``holder``,
    a weak reference) exists and has not released it; a holder that is gone
    without releasing releases here.
    """
    renewed = time.monotonic()
    while not stop.wait(ttl / 3.0):
        if holder() is None:
            try:
                release(backend, claimant)
            except Exception:  # pylint: disable=broad-except
                pass  # it expires by itself
            return
        try:
            lease = renew(backend, claimant, ttl)
            renewed = time.monotonic()
        except LeaseLost as exc:
            _set(holder, stop, lost=str(exc))
            return
        except Exception as exc:  # pylint: disable=broad-except
            # the store did not answer: keep trying until the lease may have expired there
            if lease_gone(renewed, time.monotonic(), ttl):
                _set(holder, stop, lost=f"the lease could not be renewed for {ttl:.0f}s (the store: {exc})")
                return
            continue
        _set(holder, stop, lease=lease)


def _set(holder, stop, **values):
    """The renewal's news on the holder, unless it is gone or has released the lease (``stop``)."""
    held = holder()
    if held is not None and not stop.is_set():
        for name, value in values.items():
            setattr(held, name, value)


class Holding:
    """
    A lease held by this process: acquired with :meth:`acquire` (waiting up
    to ``wait`` seconds), renewed by a daemon thread every TTL/3, checked
    with :meth:`check` before each write of the controller's state, released
    with :meth:`release`.
    """

    def __init__(self, backend, ttl, what="", claimant=None, alive=process_alive, poll=0.05):
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.backend, self.ttl, self.alive, self.poll = backend, float(ttl), alive, poll
        self.claimant = claimant or Claimant.this_process(what)
        self.lease = None
        self.lost = None
        self._stop = threading.Event()
        self._thread = None

    def acquire(self, wait, sleep=time.sleep, clock=time.monotonic):
        deadline = clock() + wait
        while True:
            attempt = try_acquire(self.backend, self.claimant, self.ttl, self.alive)
            if attempt.lease:
                self.lease = attempt.lease
                self._start()
                return attempt
            if clock() >= deadline:
                raise LeaseError(f"the reconcile lease was not free within {wait:.0f}s: {attempt.why}")
            sleep(self.poll)

    def try_acquire(self):
        """One attempt, no wait: the Attempt (``lease`` None when somebody else holds it)."""
        attempt = try_acquire(self.backend, self.claimant, self.ttl, self.alive)
        if attempt.lease:
            self.lease = attempt.lease
            self._start()
        return attempt

    def _start(self):
        self._stop.clear()
        self.lost = None
        # the thread holds this object weakly: a holder dropped without release() (its caller gone) does not
        # keep the lease alive for ever; the thread frees it and ends
        self._thread = threading.Thread(target=_renew_loop, name="edge-ha-lease", daemon=True,
                                        args=(weakref.ref(self), self._stop, self.backend, self.claimant, self.ttl))
        self._thread.start()

    def check(self):
        """Raise LeaseLost if the lease is known lost (renewal failed or it is expired by our last renewal)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if self.lease is None:
            raise LeaseLost("the reconcile lease is not held")

    @property
    def generation(self):
        return self.lease.generation if self.lease else None

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            return release(self.backend, self.claimant) if self.lease else False
        finally:
            self.lease = None


@contextlib.contextmanager
def mutex(backend, ttl=10.0, wait=10.0, what="", alive=process_alive, sleep=time.sleep):
    """
    A short critical section over the store (the history's appends, the
    counters' bumps): the same lease, not renewed (``ttl`` bounds how long a
    dead holder blocks the others), released at the end.
    """
    claimant = Claimant.this_process(what)
    deadline = time.monotonic() + wait
    while True:
        attempt = try_acquire(backend, claimant, ttl, alive)
        if attempt.lease:
            break
        if time.monotonic() >= deadline:
            raise LeaseError(f"{what or 'mutex'} not free within {wait:.0f}s: {attempt.why}")
        sleep(0.005)
    try:
        yield attempt.lease
    finally:
        release(backend, claimant)


# ------------------------------------------------------------------ backends


class FileBackend:
    """``localfs``: the record in one file, compare-and-set under an flock of ``path`` + ``.lock``."""


    def __init__(self, path):
        self.path = path

    def now(self):
        return time.time()

    def read(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def cas(self, expected, new):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.read() != expected:
                return False
            # not fsynced: a crash of the machine ends every holder of this file's lease with it, and a
            # record lost or left empty reads as free (unreadable: taken over), the next generation
            # still above the clock in ms (next_generation)
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(new)
            os.replace(tmp, self.path)
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_REDIS_CAS = """
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '' and cur == false) or (ARGV[1] ~= '' and cur == ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[2])
    return 1
end
return 0
"""


class RedisBackend:
    """redis: the record in one key, compare-and-set in one Lua script (atomic on the server), the server's clock."""


    def __init__(self, client, key):
        self.client, self.key = client, key
        self._cas = client.register_script(_REDIS_CAS)

    def now(self):
        seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def read(self):
        value = self.client.get(self.key)
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def cas(self, expected, new):
        if expected == "":
            raise ValueError("an empty lease record cannot be compared")
        return bool(self._cas(keys=[self.key], args=[expected or "", new]))


def redis_client(opts):
    """A redis client with Salt's ``cache.redis.*`` connection settings (those of its ``redis`` cache backend)."""
    import redis  # pylint: disable=import-outside-toplevel
    from redis.backoff import ExponentialBackoff  # pylint: disable=import-outside-toplevel
    from redis.retry import Retry  # pylint: disable=import-outside-toplevel

    if opts.get("cache.redis.cluster_mode"):
        raise UnsupportedBackend("the edge_ha lease on a redis cluster is not supported (one key, one node: use "
                                 "a single redis server or its sentinel-managed primary)")
    return redis.Redis(opts.get("cache.redis.host", "localhost"), int(opts.get("cache.redis.port", 6379)),
                       unix_socket_path=opts.get("cache.redis.unix_socket_path"),
                       db=int(opts.get("cache.redis.db", 0)), password=opts.get("cache.redis.password") or None,
                       socket_timeout=float(opts.get("edge_ha_store_timeout", 5)),
                       # a store that is down fails the lease in well under a second (redis-py's default
                       # retries take seconds per call), so the master goes on with what it knows
                       retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))


LOCAL_DRIVERS = ("localfs",)
REDIS_DRIVERS = ("redis", "redis_cache")


def backend_for(driver, opts, directory, name):
    """The lease primitive for Salt cache ``driver``: a file in ``directory`` (localfs) or a redis key."""
    if driver in LOCAL_DRIVERS:
        return FileBackend(os.path.join(directory, f"{name}.lease"))
    if driver in REDIS_DRIVERS:
        return RedisBackend(redis_client(opts), f"edge_ha:lease:{name}")
    raise UnsupportedBackend(f"edge_ha_cache: {driver!r} has no lease primitive here (localfs and redis have); "
                             "the reconcile lock needs one")
