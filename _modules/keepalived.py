"""
keepalived on an edge node: render, validate, status, reload.

The configuration is rendered from the ``edge_ha`` pillar model (see
``_modules/edge_ha.py``) with the Jinja template ``KEEPALIVED_TEMPLATE`` below
(override with ``template=salt://...``). Validation is the model's own checks
plus ``keepalived -t`` on a temporary file; any non-zero exit is a failure.

Transitions are made observable on the node through keepalived's
``notify_fifo``: keepalived writes ``INSTANCE "VI_1" MASTER 150`` lines to a
FIFO, and the ``notify_fifo_script`` this module ships (``NOTIFY_SCRIPT``,
installed by ``keepalived.managed``) keeps one JSON file per instance in the
state directory (``<state_dir>/<instance>.json``: state, priority, time) and
appends to ``<state_dir>/transitions.log``. notify_fifo delivers transitions in
order, which separate notify scripts do not.

Node-local settings come from ``config.get('keepalived')`` (minion config,
grains or pillar), all optional:

.. code-block:: yaml

    keepalived:
      config_file: /etc/keepalived/keepalived.conf
      state_dir: /run/edge-ha                   # instance state files, FIFO
      notify_script: /usr/local/sbin/edge-ha-notify
      service_mode: service                     # or "process": no init system
      service_name: keepalived
      pid_dir: /run/edge-ha                     # process mode pid files
      service_pid_dir: /run                     # service mode: where keepalived writes them itself
      binary: keepalived
      settle_time: 1.5                          # seconds to wait after (re)load

``service_mode: process`` runs keepalived directly (``keepalived -n -l -D``
with explicit pid files, output in ``<state_dir>/keepalived.log``); the lab and
the functional tests use it, since they have no init system.

``service_mode: service`` (the default) drives the init system's unit
(``service.start``/``service.reload``, systemd: ``ExecReload`` = SIGHUP). The
packaged unit passes keepalived no pid file options, so keepalived writes
them at its compiled-in defaults (``<service_pid_dir>/keepalived.pid``,
``vrrp.pid``, ``checkers.pid``); ``pid_files`` returns them for either mode.
The SLS ``edge.keepalived`` installs a systemd drop-in for the unit (the
state directory created before start, ``Restart=on-failure``).
"""

import difflib
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import time

from edge_ha_core import desired
from edge_ha_core import fleet
from edge_ha_core import text
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

try:
    import jinja2

    HAS_JINJA = True
except ImportError:  # pragma: no cover
    HAS_JINJA = False

log = logging.getLogger(__name__)

__virtualname__ = "keepalived"

__load__ = [
    "render", "validate", "plan", "write_config", "write_rendered", "check_file", "install_notify_script",
    "status", "reload", "version", "running", "start", "stop", "settings", "log_tail",
    "out_of_service", "out_of_service_state", "release_stale_vips",
    "standby", "standby_state", "drained_nodes", "set_drained_nodes", "rollback", "pid_files",
]

DEFAULTS = {
    "config_file": "/etc/keepalived/keepalived.conf",
    "state_dir": "/run/edge-ha",
    "notify_script": "/usr/local/sbin/edge-ha-notify",
    "service_mode": "service",
    "service_name": "keepalived",
    "pid_dir": "/run/edge-ha",
    "service_pid_dir": "/run",
    "binary": "keepalived",
    "settle_time": 1.5,
}
# settings that are absolute paths (they reach keepalived.conf, its command line and the unit drop-in)
PATH_SETTINGS = ("config_file", "state_dir", "notify_script", "pid_dir", "service_pid_dir")

KEEPALIVED_TEMPLATE = """\
# Managed by salt-edge-ha (keepalived.managed) for node {{ view.node }}.
# Edit the edge_ha pillar instead: local changes are overwritten.

global_defs {
    router_id {{ view.global_defs.router_id }}
{%- for key in ("vrrp_garp_master_delay", "vrrp_garp_master_repeat", "vrrp_garp_master_refresh", "vrrp_garp_interval", "vrrp_gna_interval") %}
{%- if view.global_defs[key] is defined %}
    {{ key }} {{ view.global_defs[key] }}
{%- endif %}
{%- endfor %}
{%- if view.global_defs.get("enable_script_security", true) %}
    enable_script_security
{%- endif %}
    script_user {{ view.global_defs.get("script_user", "root") }}
{%- set sync = view.global_defs.get("lvs_sync_daemon") %}
{%- if sync %}
    lvs_sync_daemon {{ sync.get("interface", view.me.interface) }} {{ sync.instance }}{% if sync.id is defined %} id {{ sync.id }}{% endif %}
{%- endif %}
    notify_fifo {{ paths.state_dir }}/notify.fifo
    notify_fifo_script "{{ paths.notify_script }} {{ paths.state_dir }}"
}
{% for name, s in view.vrrp_scripts | dictsort %}
vrrp_script {{ name }} {
    script "{{ s.script }}"
{%- for key in ("interval", "timeout", "weight", "rise", "fall", "user") %}
{%- if s[key] is defined %}
    {{ key }} {{ s[key] }}
{%- endif %}
{%- endfor %}
{%- if s.get("init_fail") %}
    init_fail
{%- endif %}
}
{% endfor %}
{#- Set to 1 by the reconciler (keepalived.out_of_service) to take this node
    out of VIP ownership: weight 0 puts every instance in FAULT. #}
vrrp_track_file edge_ha_out_of_service {
    file {{ paths.state_dir }}/out_of_service
    weight 0
    init_file 0
}
{#- Set to 1 by edge.drain and staged reloads (keepalived.standby): weight
    -253 lowers every instance's priority to 1, so a backup takes the VIPs
    over before this node lets go (make-before-break); the node stays a
    backup of last resort. #}
vrrp_track_file edge_ha_standby {
    file {{ paths.state_dir }}/standby
    weight -253
    init_file 0
}
{% for name, f in view.vrrp_track_files | dictsort %}
vrrp_track_file {{ name }} {
    file {{ f.file }}
{%- if f.weight is defined %}
    weight {{ f.weight }}
{%- endif %}
{%- if f.get("init_file") %}
    init_file
{%- endif %}
}
{% endfor %}
{%- for i in view.vrrp_instances %}
vrrp_instance {{ i.name }} {
    state {{ i.state }}
    interface {{ i.interface }}
    virtual_router_id {{ i.virtual_router_id }}
    priority {{ i.priority }}
    advert_int {{ i.advert_int }}
    version {{ i.vrrp_version }}
{%- if i.nopreempt %}
    nopreempt
{%- endif %}
{%- if i.preempt_delay is not none %}
    preempt_delay {{ i.preempt_delay }}
{%- endif %}
{%- if i.garp_master_delay is not none %}
    garp_master_delay {{ i.garp_master_delay }}
{%- endif %}
{%- if i.authentication %}
    authentication {
        auth_type {{ i.authentication.auth_type }}
        auth_pass {{ i.authentication.auth_pass }}
    }
{%- endif %}
{%- if i.unicast %}
    unicast_src_ip {{ i.unicast_src_ip }}
    unicast_peer {
{%- for peer in i.unicast_peer %}
        {{ peer }}
{%- endfor %}
    }
{%- endif %}
    virtual_ipaddress {
        {{ i.virtual_ipaddress[0] }} dev {{ i.interface }}
    }
{%- if i.virtual_ipaddress[1:] %}
    # Further VIPs stay out of the adverts: peers drop adverts whose address
    # list differs from theirs, so listing them there would make adding one
    # (rolled out node by node) trigger an election.
    virtual_ipaddress_excluded {
{%- for vip in i.virtual_ipaddress[1:] %}
        {{ vip }} dev {{ i.interface }}
{%- endfor %}
    }
{%- endif %}
    track_file {
        edge_ha_out_of_service
        edge_ha_standby
{%- for item in i.track_file %}
        {{ item }}
{%- endfor %}
    }
{%- for key in ("track_script", "track_interface") %}
{%- if i[key] %}
    {{ key }} {
{%- for item in i[key] %}
        {{ item }}
{%- endfor %}
    }
{%- endif %}
{%- endfor %}
}
{% endfor %}
{%- macro check(c, port) %}
{%- if c %}
        {{ c.type }} {
{%- if c.type in ("HTTP_GET", "SSL_GET") %}
            url {
                path {{ c.path }}
                status_code {{ c.get("status_code", 200) }}
            }
{%- endif %}
            connect_port {{ c.get("connect_port", port) }}
{%- for key in ("connect_timeout", "retry", "delay_before_retry") %}
{%- if c[key] is defined %}
            {{ key }} {{ c[key] }}
{%- endif %}
{%- endfor %}
        }
{%- endif %}
{%- endmacro %}
{%- for vs in view.virtual_servers %}
virtual_server {{ vs.address }} {{ vs.port }} {
    delay_loop {{ vs.delay_loop }}
    lb_algo {{ vs.lb_algo }}
    lb_kind {{ vs.lb_kind }}
{%- if vs.persistence_timeout %}
    persistence_timeout {{ vs.persistence_timeout }}
{%- endif %}
    protocol {{ vs.protocol }}
{%- for rs in vs.real_servers %}
    real_server {{ rs.address }} {{ rs.port }} {
        weight {{ rs.weight }}
{{- check(rs.health_check, rs.port) }}
    }
{%- endfor %}
}
{% endfor %}
"""

NOTIFY_SCRIPT = r"""#!/bin/sh
# salt-edge-ha notify_fifo_script, installed by keepalived.managed: do not edit.
# keepalived runs it as "<script> <state_dir> <fifo>" and writes one line per
# transition to the FIFO:  INSTANCE "VI_1" MASTER 150
# Each instance's current state goes to <state_dir>/<instance>.json (replaced
# atomically); every transition is appended to <state_dir>/transitions.log.
# keepalived sends SIGTERM to this script's process group when it stops, and only
# then writes each instance's STOP line: ignore it to record STOP (the master then
# knows at once that the node is stopping); the loop ends when keepalived closes
# the FIFO at its exit.
trap '' TERM
dir="$1"
fifo="$2"
mkdir -p "$dir"
while read -r kind name state prio rest; do
    [ "$kind" = INSTANCE ] || continue
    name=${name#\"}
    name=${name%\"}
    now=$(date +%s.%N)
    tmp="$dir/.$name.json.$$"
    printf '{"instance": "%s", "state": "%s", "priority": %s, "time": %s}\n' \
        "$name" "$state" "${prio:-0}" "$now" > "$tmp" && mv -f "$tmp" "$dir/$name.json"
    printf '%s %s %s %s\n' "$now" "$name" "$state" "${prio:-0}" >> "$dir/transitions.log"
    if [ "$(wc -l < "$dir/transitions.log")" -gt 2000 ]; then
        tail -n 1000 "$dir/transitions.log" > "$dir/.transitions.$$" && mv -f "$dir/.transitions.$$" "$dir/transitions.log"
    fi
done < "$fifo"
"""


def __virtual__():
    if not HAS_JINJA:
        return (False, "keepalived module: the jinja2 Python package is missing")
    return __virtualname__


# ---------------------------------------------------------------- pure logic


@functools.lru_cache(maxsize=8)
def _compiled(template):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template)


def render_config(view, paths, template=None):
    """
    Render keepalived.conf text for one node view (from ``edge_ha.view_for_node``).
    The first line names the view's digest (``edge_ha_core.desired``), whatever the
    template: the master compares it with its own to know which nodes need a re-render.
    """
    text = _compiled(template or KEEPALIVED_TEMPLATE).render(view=view, paths=paths)
    lines = [desired.header_line(view)] + [line.rstrip() for line in text.splitlines()]
    out = []
    for line in lines:  # collapse runs of blank lines left by the template
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


def unified_diff(old, new, path):
    """A unified diff of two config texts ('' when equal)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{path} (current)",
            tofile=f"{path} (new)",
        )
    )


def _run_check(path, binary):
    """``keepalived -t -f path`` -> (ok, output). A crash or hang is a failure with a clear message."""
    try:
        proc = subprocess.run(
            [binary, "-t", "-f", path],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandExecutionError(f"keepalived binary {binary!r} not found: install keepalived") from exc
    except subprocess.TimeoutExpired:
        return False, "keepalived -t did not finish within 30 s: the config is not accepted"
    output = mask_secrets((proc.stdout + proc.stderr).strip())
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return False, (
            f"keepalived -t crashed ({name}) on this config: keepalived itself fails on it, so it is "
            "not accepted" + (f":\n{output}" if output else "")
        )
    return proc.returncode == 0, f"keepalived -t exit {proc.returncode}" + (f":\n{output}" if output else "")


def check_config(text, binary="keepalived"):
    """
    Run ``keepalived -t`` on ``text`` in a temporary file (mode 0600: it
    holds auth_pass). Returns (ok, output), secrets masked. Any non-zero
    exit is a failure; so is a crash (keepalived 2.2.7 segfaults on some
    inputs) or a hang.
    """
    fd, path = tempfile.mkstemp(prefix="keepalived-check-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        ok, output = _run_check(path, binary)
        return ok, output.replace(path, "<new config>")
    finally:
        os.unlink(path)


SECRET_MASK = "********"
_SECRET_RE = re.compile(r"(\bauth_pass[ \t]+)[^\s'\"]+")


def mask_secrets(text):
    """``text`` (a config, a diff, keepalived output) with every auth_pass value replaced by ********."""
    return _SECRET_RE.sub(r"\g<1>" + SECRET_MASK, text or "")


def config_digest(text):
    """sha256 of a config text (None when there is no text): what plans report instead of the text."""
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def masked_diff(old, new, path):
    """The unified diff of two configs with auth_pass values masked (a changed password still shows as a change)."""
    return mask_secrets(unified_diff(old, new, path))


# pillar keys of the keepalived keywords inside each block (for mapping keepalived -t messages back)
_KEYWORD_KEYS = {
    "vrrp_instance": {
        "interface": "interface", "virtual_router_id": "virtual_router_id", "priority": "priority",
        "state": "state", "advert_int": "advert_int", "version": "vrrp_version", "nopreempt": "nopreempt",
        "preempt_delay": "preempt_delay", "garp_master_delay": "garp_master_delay",
        "authentication": "authentication", "auth_type": "authentication:auth_type",
        "auth_pass": "authentication:auth_pass", "unicast_src_ip": "unicast", "unicast_peer": "unicast",
        "virtual_ipaddress": "virtual_ipaddress", "virtual_ipaddress_excluded": "virtual_ipaddress",
        "track_script": "track_script", "track_file": "track_file", "track_interface": "track_interface",
    },
    "vrrp_script": {k: k for k in ("script", "interval", "timeout", "weight", "rise", "fall", "user", "init_fail")},
    "vrrp_track_file": {k: k for k in ("file", "weight", "init_file")},
    "global_defs": {k: k for k in (
        "router_id", "script_user", "enable_script_security", "lvs_sync_daemon", "vrrp_garp_master_delay",
        "vrrp_garp_master_repeat", "vrrp_garp_master_refresh", "vrrp_garp_interval", "vrrp_gna_interval")},
    "virtual_server": {
        "delay_loop": "delay_loop", "lb_algo": "lb_algo", "lb_kind": "lb_kind",
        "persistence_timeout": "persistence_timeout", "protocol": "protocol", "real_server": "real_servers",
    },
}


def _block_path(header, view):
    kind, name = header[0], header[1] if len(header) > 1 else ""
    if kind == "global_defs":
        return "edge_ha:global_defs"
    if kind == "vrrp_instance":
        return f"edge_ha:vrrp_instances:{name}"
    if kind == "vrrp_script":
        return f"edge_ha:vrrp_scripts:{name}"
    if kind == "vrrp_track_file" and not name.startswith("edge_ha_"):
        return f"edge_ha:vrrp_track_files:{name}"
    if kind == "virtual_server" and len(header) > 2:
        return _server_path(name, header[2], view)
    return None


def _server_path(address, port, view):
    for vs in view.get("virtual_servers", []):
        if vs["address"] == address and str(vs["port"]) == str(port):
            return f"edge_ha:virtual_servers:{vs['name']}"
    return None


def explain_check_output(output, text, view):
    """
    Map ``keepalived -t`` messages back to pillar paths: by the line number
    keepalived gives (the block and keyword on that line of ``text``), else by
    the instance, script or virtual server a message names. Returns
    ``[(path, message)]``; messages naming nothing of the pillar are left out.
    """
    where = {}
    header, depth = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        bare = re.sub(r'"[^"]*"', '""', line.strip())
        words = line.split()
        if depth == 0 and bare.endswith("{"):
            header = bare[:-1].split()
        if header and words:
            where[number] = (header, words[0])
        depth = max(0, depth + bare.count("{") - bare.count("}"))
    instances = {i["name"] for i in view.get("vrrp_instances", [])}
    out = []
    for raw in output.splitlines()[1:]:
        message = re.sub(r"^\((?:<new config>|[^)]*): Line \d+\)\s*|^\(Line \d+\)\s*", "", raw.strip())
        path = None
        line = re.search(r"Line (\d+)\)", raw)
        if line and int(line.group(1)) in where:
            head, keyword = where[int(line.group(1))]
            path = _block_path(head, view)
            key = _KEYWORD_KEYS.get(head[0], {}).get(keyword)
            if path and key:
                path = f"{path}:{key}"
        if path is None and (match := re.match(r"\((\S+)\)", message)) and match.group(1) in instances:
            path = f"edge_ha:vrrp_instances:{match.group(1)}"
        if path is None and (match := re.search(r"\bscript (\S+)", message)) and \
                match.group(1) in view.get("vrrp_scripts", {}):
            path = f"edge_ha:vrrp_scripts:{match.group(1)}:script"
        for match in re.finditer(r"\[([^\]]+)\]:(?:tcp|udp|sctp):(\d+)", message) if path is None else ():
            path = path or _server_path(match.group(1), match.group(2), view)
        if path and (path, message) not in out:
            out.append((path, message))
    return out


CONFIG_MODE = 0o600  # keepalived.conf and its .bak/.failed copies hold auth_pass


def write_atomic(path, text, mode=CONFIG_MODE, backup=None):
    """
    Write ``text`` to ``path`` through a temporary file in the same directory
    and a rename, then fsync the directory. With ``backup``, the previous file
    is first copied there (same mode). The mode is set before the rename, so
    the file is never readable by others, not even for a moment.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if backup and os.path.exists(path):
        with open(path, "rb") as src:
            data = src.read()
        _write_bytes(backup, data, mode)
    _write_bytes(path, text.encode(), mode)


def _write_bytes(path, data, mode):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_text(path):
    """File content, or '' if it does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def read_instance_states(state_dir):
    """The per-instance state files written by the notify script."""
    states = {}
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return states
    for fname in names:
        if not fname.endswith(".json") or fname.startswith("."):
            continue
        try:
            with open(os.path.join(state_dir, fname), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "instance" in data and "state" in data:  # not ingress_health.json etc.
            states[data["instance"]] = data
    return states


def interface_addresses(interface):
    """Addresses (without prefix) present on ``interface`` now, from ``ip -j addr``."""
    proc = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", interface],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return []
    out = []
    for link in json.loads(proc.stdout or "[]"):
        for addr in link.get("addr_info", []):
            out.append(str(ipaddress.ip_address(addr["local"])))
    return out


def pid_alive(pid):
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except OSError:
        return False
    # field 3 is the state; Z = zombie (dead, not yet reaped)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(path):
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------- Salt layer


def settings():
    """
    The node-local settings (paths, service mode), with defaults filled in.
    Raises ``SaltInvocationError`` naming the ``keepalived:`` key when a
    setting is unusable (a relative path or one with whitespace, control or
    keepalived syntax characters; an unknown ``service_mode``).

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.settings
    """
    given = __salt__["config.get"]("keepalived", {}) or {}  # pylint: disable=undefined-variable
    if not isinstance(given, dict):
        raise SaltInvocationError(f"keepalived (node settings) must be a mapping, got {text.describe(given)}")
    conf = dict(DEFAULTS, **given)
    errors = text.settings_errors(conf, PATH_SETTINGS)
    if errors:
        raise SaltInvocationError("invalid node settings: " + "; ".join(errors))
    return conf


def _pid_files(conf):
    if conf["service_mode"] != "process":
        # the unit starts keepalived without -p/-r/-c: its compiled-in default names
        return {
            "main": os.path.join(conf["service_pid_dir"], "keepalived.pid"),
            "vrrp": os.path.join(conf["service_pid_dir"], "vrrp.pid"),
            "checkers": os.path.join(conf["service_pid_dir"], "checkers.pid"),
        }
    return {
        "main": os.path.join(conf["pid_dir"], "keepalived.pid"),
        "vrrp": os.path.join(conf["pid_dir"], "keepalived_vrrp.pid"),
        "checkers": os.path.join(conf["pid_dir"], "keepalived_checkers.pid"),
    }


def pid_files():
    """
    keepalived's pid files on this node (``main``, ``vrrp``, ``checkers``):
    process mode: in ``pid_dir``, as ``keepalived.start`` passes them; service
    mode: keepalived's own defaults in ``service_pid_dir`` (the packaged unit
    passes none).

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.pid_files
    """
    return _pid_files(settings())


def _paths(conf):
    return {"state_dir": conf["state_dir"], "notify_script": conf["notify_script"]}


def _render(node=None, template=None, pillar=None):
    """(view, config text) for this minion or ``node``."""
    view = __salt__["edge_ha.node_view"](node=node, pillar=pillar, drained=drained_nodes())  # pylint: disable=undefined-variable
    text = None
    if template:
        cached = __salt__["cp.cache_file"](template)  # pylint: disable=undefined-variable
        if not cached:
            raise SaltInvocationError(f"template {template!r} not found")
        text = read_text(cached)
    return view, render_config(view, _paths(settings()), text)


def render(node=None, template=None, pillar=None, show_secrets=False):
    """
    Render keepalived.conf for this minion (or ``node``) from the edge_ha
    pillar. The pillar is validated first; an invalid one raises an error
    listing every problem.

    template
        Optional ``salt://`` path (or local path) of a Jinja template to use
        instead of the built-in one; it gets ``view`` and ``paths``.

    show_secrets
        ``auth_pass`` values are masked (``********``) unless this is True:
        the return of a remote call lands in the job cache.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.render
        salt-call keepalived.render node=edge2

    ``pillar``: the pillar data to render from instead of this minion's (see ``plan``).
    """
    text = _render(node=node, template=template, pillar=pillar)[1]
    return text if show_secrets else mask_secrets(text)


def log_tail(lines=15):
    """
    Last lines of the process-mode keepalived log ('' when there is none).

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.log_tail lines=40
    """
    path = os.path.join(settings()["state_dir"], "keepalived.log")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            tail = fh.read().splitlines()[-lines:]
    except OSError:
        return ""
    return "last lines of {}:\n  {}".format(path, "\n  ".join(tail)) if tail else ""


def validate(node=None, template=None):
    """
    Validate the pillar model and the rendered config with ``keepalived -t``.
    Returns ``{"valid": bool, "errors": [...], "output": "<keepalived -t output>"}``.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.validate

    salt-call exits non-zero when the result is not valid (the errors are still returned).
    """
    result = plan(node=node, template=template)
    if not result["valid"]:
        __context__["retcode"] = 1  # pylint: disable=undefined-variable
    return {"valid": result["valid"], "errors": result["errors"], "output": result["check_output"]}


def _plan(node=None, template=None, pillar=None):
    """Like ``plan`` but with the config texts (``old``, ``new``): for this module only, never returned to Salt."""
    conf = settings()
    path = conf["config_file"]
    out = {
        "config_file": path, "valid": False, "errors": [], "check_output": "",
        "old": read_text(path), "new": "", "diff": "",
    }
    errors = __salt__["edge_ha.validate"](pillar=pillar)  # pylint: disable=undefined-variable
    if errors:
        out["errors"] = ["edge_ha pillar is invalid:"] + errors
        return out
    view, out["new"] = _render(node=node, template=template, pillar=pillar)
    ok, out["check_output"] = check_config(out["new"], conf["binary"])
    if not ok:
        out["errors"] = ["rendered keepalived.conf fails validation: " + out["check_output"]] + [
            f"{where}: keepalived -t: {message}" for where, message in explain_check_output(out["check_output"], out["new"], view)
        ]
        return out
    out["valid"] = True
    out["diff"] = masked_diff(out["old"], out["new"], path)
    # instances whose VRRP state a reload (SIGHUP) would not keep: another interface, VRID or version, or gone
    out["state_lost_on_reload"] = desired.reload_keeps_state(
        out["old"], out["new"], sorted(desired.vrrp_identities(out["old"])))
    out["notify_script_current"] = read_text(conf["notify_script"]) == NOTIFY_SCRIPT
    out["running"] = running()
    # a keepalived started with another file (keepalived:config_file changed) reads that one again
    # at a reload: it needs a restart, which re-creates every VRRP instance
    reads = _running_config_file(conf) if out["running"] else None
    out["restart_needed"] = bool(reads and reads != path)
    if out["restart_needed"]:
        out["restart_reason"] = f"keepalived runs with {reads}, keepalived:config_file is {path}"
        out["state_lost_on_reload"] = sorted(desired.vrrp_identities(read_text(reads)))
    return out


def _running_config_file(conf):
    """The file the running keepalived reads at a reload (from its command line), or None if unknown."""
    pid = read_pid(_pid_files(conf)["main"])
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().decode(errors="replace").split("\0")[:-1]
    except (OSError, TypeError):
        return None
    return desired.config_file_of(argv) if argv else None


def plan(node=None, template=None, fresh_pillar=False):
    """
    What applying the pillar would change, without changing anything:
    ``{valid, errors, check_output, config_file, old_hash, new_hash, changed,
    diff, notify_script_current, running, state_lost_on_reload,
    restart_needed}``. ``valid`` covers the pillar model and ``keepalived
    -t``; ``state_lost_on_reload`` names the running config's VRRP instances
    whose state a reload would not keep (gone, or another interface, VRID or
    VRRP version; all of them when ``restart_needed``: the running keepalived
    was started with another file than ``keepalived:config_file``, and says
    which in ``restart_reason``).

    No secret is returned (the master's reconcile calls this on every node, so
    the return lands in the job cache and on the event bus): the configs are
    reported by their sha256 (``old_hash`` is None when there is no file), and
    ``auth_pass`` values in ``diff`` and ``check_output`` read ``********``.
    ``changed`` (and a non-empty ``diff``) also when only a password changed.

    fresh_pillar
        compile the pillar now (``pillar.items``) instead of using the
        minion's in-memory copy, which is only as new as the last refresh
        (the master's reconcile uses this)

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.plan
        salt edge1 keepalived.plan fresh_pillar=True
    """
    pillar = __salt__["pillar.items"](unmask=True) if fresh_pillar else None  # pylint: disable=undefined-variable
    return _public_plan(_plan(node=node, template=template, pillar=pillar))


def _public_plan(full):
    out = {key: value for key, value in full.items() if key not in ("old", "new")}
    out["errors"] = [mask_secrets(e) for e in full["errors"]]
    out["old_hash"] = config_digest(full["old"])
    out["new_hash"] = config_digest(full["new"])
    out["changed"] = bool(full["valid"] and full["old"] != full["new"])
    return out


def write_rendered(node=None, template=None, expected_hash=None, backup=True):
    """
    Render this node's config again, check it (pillar model and ``keepalived
    -t``) and write it atomically (mode 0600), the previous file kept as
    ``<config_file>.bak``. With ``expected_hash`` (a plan's ``new_hash``),
    refuse if the rendered config is not the one planned (the pillar changed
    in between). Does not reload. Returns ``{config_file, written, hash}``.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.write_rendered
    """
    full = _plan(node=node, template=template)
    if not full["valid"]:
        raise CommandExecutionError(mask_secrets("\n  ".join(full["errors"])))
    digest = config_digest(full["new"])
    if expected_hash and digest != expected_hash:
        raise CommandExecutionError(
            f"the rendered config ({digest[:16]}) is not the planned one ({str(expected_hash)[:16]}): "
            "the pillar changed in between; nothing written"
        )
    path = full["config_file"]
    if full["old"] == full["new"]:
        return {"config_file": path, "written": False, "hash": digest}
    write_atomic(path, full["new"], backup=(path + ".bak") if backup and full["old"] else None)
    return {"config_file": path, "written": True, "hash": digest}


def write_config(text, backup=True):
    """
    Write ``text`` as keepalived.conf atomically (mode 0600: it holds
    auth_pass); with ``backup`` the previous file is kept as
    ``<config_file>.bak``. Does not reload.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.write_config "$(cat keepalived.conf)"
    """
    path = settings()["config_file"]
    write_atomic(path, text, backup=(path + ".bak") if backup else None)
    return path


def install_notify_script():
    """
    Install the notify_fifo_script that records transitions in the state
    directory. Returns True if it was written, False if already current.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.install_notify_script
    """
    path = settings()["notify_script"]
    if read_text(path) == NOTIFY_SCRIPT:
        return False
    write_atomic(path, NOTIFY_SCRIPT, mode=0o755)
    return True


def out_of_service(enabled=True, reason=""):
    """
    Take this node out of VIP ownership (``enabled=True``: every VRRP instance
    goes to FAULT and releases its VIPs at once) or put it back
    (``enabled=False``), through the track file
    ``<state_dir>/out_of_service`` that keepalived watches. The reason is kept
    beside it. Returns ``{changed, out_of_service, reason}``.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.out_of_service reason="ingress unhealthy"
        salt-call keepalived.out_of_service enabled=False
    """
    return _flag("out_of_service", enabled, reason)


def release_stale_vips(node=None):
    """
    Remove this node's VIPs from its interfaces when keepalived is NOT
    running (a killed keepalived leaves them behind, and two nodes then answer
    for the VIP). Does nothing while keepalived runs. Returns the addresses
    removed.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.release_stale_vips
    """
    if running():
        return []
    view = __salt__["edge_ha.node_view"](node=node)  # pylint: disable=undefined-variable
    removed = []
    for inst in view["vrrp_instances"]:
        present = interface_addresses(inst["interface"])
        for vip in inst["virtual_ipaddress"]:
            if vip.split("/")[0] in present:
                proc = subprocess.run(["ip", "addr", "del", vip, "dev", inst["interface"]],
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise CommandExecutionError(f"could not remove {vip} from {inst['interface']}: {proc.stderr.strip()}")
                removed.append(vip.split("/")[0])
    return removed


def out_of_service_state():
    """
    Whether this node is out of VIP ownership, and why.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.out_of_service_state
    """
    return _flag_state("out_of_service")


def _flag(name, enabled, reason):
    """Write a 0/1 track file in the state dir (and its reason beside it): ``{changed, <name>, reason}``."""
    path = os.path.join(settings()["state_dir"], name)
    want = "1\n" if enabled else "0\n"
    changed = read_text(path).strip() != want.strip()
    if changed:
        write_atomic(path, want)
        write_atomic(path + ".reason", json.dumps({"reason": reason if enabled else "", "time": time.time()}) + "\n")
    return {"changed": changed, name: bool(enabled), "reason": reason if enabled else ""}


def _flag_state(name):
    path = os.path.join(settings()["state_dir"], name)
    try:
        info = json.loads(read_text(path + ".reason") or "{}")
    except ValueError:
        info = {}
    return {name: read_text(path).strip() not in ("", "0"), "reason": info.get("reason", ""),
            "since": info.get("time")}


def standby(enabled=True, reason=""):
    """
    Put this node on standby (``enabled=True``): every VRRP instance's
    priority drops to 1 through the track file ``<state_dir>/standby``, so a
    backup takes the VIPs over *before* this node releases them (no moment
    without an owner; needs preemption, keepalived's default). The node stays
    a backup of last resort. ``enabled=False`` restores the configured
    priorities (with preemption the VIPs come back). Used by ``edge.drain``
    and by staged reloads. Returns ``{changed, standby, reason}``.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.standby reason="maintenance"
        salt-call keepalived.standby enabled=False
    """
    return _flag("standby", enabled, reason)


def standby_state():
    """
    Whether this node is on standby (priority 1), why and since when.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.standby_state
    """
    return _flag_state("standby")


DRAINED_FILE = "drained_nodes"


def drained_nodes():
    """
    The edge nodes this node renders as drained (their IPVS real servers get
    weight 0), as set by ``edge.drain`` on the master.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.drained_nodes
    """
    try:
        data = json.loads(read_text(os.path.join(settings()["state_dir"], DRAINED_FILE)) or "[]")
    except ValueError:
        return []
    return sorted(data) if isinstance(data, list) else []


def set_drained_nodes(nodes=None):
    """
    Record which edge nodes are drained (``edge.drain`` calls this on every
    edge node). The next render gives their real servers weight 0; nothing is
    reloaded here. Returns True if the list changed.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.set_drained_nodes '["edge1"]'
    """
    if isinstance(nodes, str):
        nodes = [n for n in nodes.split(",") if n]
    nodes = sorted(set(nodes or []))
    if nodes == drained_nodes():
        return False
    conf = settings()
    os.makedirs(conf["state_dir"], exist_ok=True)
    write_atomic(os.path.join(conf["state_dir"], DRAINED_FILE), json.dumps(nodes) + "\n")
    return True


def rollback():
    """
    Go back to the previous keepalived.conf (``<config_file>.bak``, kept by
    ``keepalived.managed``): the current file is kept as
    ``<config_file>.failed``, the previous one is written back and loaded
    (reload, or start when keepalived is not running). Returns
    ``{rolled_back, running, config_file}``; raises when there is no previous file.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.rollback
    """
    conf = settings()
    path = conf["config_file"]
    previous = read_text(path + ".bak")
    if not previous:
        raise CommandExecutionError(f"no previous config {path}.bak to roll back to")
    current = read_text(path)
    if current == previous:
        return {"rolled_back": False, "running": running(), "config_file": path}
    write_atomic(path + ".failed", current)  # both hold auth_pass: 0600 like the config
    write_atomic(path, previous)
    alive = reload() if running() else start()
    return {"rolled_back": True, "running": alive, "config_file": path}


def running():
    """
    True if keepalived is running (process mode: the pid in its pid file is
    alive; service mode: the service is running).

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.running
    """
    conf = settings()
    if conf["service_mode"] == "process":
        pids = _pid_files(conf)
        return pid_alive(read_pid(pids["main"])) and pid_alive(read_pid(pids["vrrp"]))
    return bool(__salt__["service.status"](conf["service_name"]))  # pylint: disable=undefined-variable


def start():
    """
    Start keepalived (process mode: ``keepalived -n -l -D`` detached, output
    in ``<state_dir>/keepalived.log``). Returns True when it runs after the
    settle time.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.start
    """
    conf = settings()
    if conf["service_mode"] != "process":
        __salt__["service.start"](conf["service_name"])  # pylint: disable=undefined-variable
        return _settled(conf)
    if running():
        return True
    pids = _pid_files(conf)
    os.makedirs(conf["pid_dir"], exist_ok=True)
    os.makedirs(conf["state_dir"], exist_ok=True)
    for path in pids.values():
        if os.path.exists(path):
            os.unlink(path)
    cmd = [
        conf["binary"], "-n", "-l", "-D",
        "-f", conf["config_file"],
        "-p", pids["main"], "-r", pids["vrrp"], "-c", pids["checkers"],
    ]
    with open(os.path.join(conf["state_dir"], "keepalived.log"), "ab") as logf:
        subprocess.Popen(  # pylint: disable=consider-using-with
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    return _settled(conf)


def _settled(conf):
    """Wait the settle time, then report whether keepalived runs."""
    deadline = time.monotonic() + float(conf["settle_time"])
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return running()


def stop():
    """
    Stop keepalived (process mode: SIGTERM to the pid from its pid file, wait
    up to 10 s). Returns True when it is not running.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.stop
    """
    conf = settings()
    if conf["service_mode"] != "process":
        __salt__["service.stop"](conf["service_name"])  # pylint: disable=undefined-variable
        return not running()
    pid = read_pid(_pid_files(conf)["main"])
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return not running()


def check_file():
    """
    Check the config file on disk with keepalived's own config test
    (``keepalived -t``, ``--config-test`` in keepalived 2.x); raises with its
    (masked) output when keepalived rejects it. ``reload`` runs this first.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.check_file
    """
    conf = settings()
    ok, output = _run_check(conf["config_file"], conf["binary"])
    if not ok:
        raise CommandExecutionError(f"{conf['config_file']} fails keepalived's config test; not reloading: {output}")
    return True


def reload():
    """
    Reload keepalived's configuration (SIGHUP; VRRP state is kept for
    instances whose VRID and interface are unchanged), after keepalived's own
    config test of the file (``check_file``): a file keepalived rejects is
    never loaded. Returns True when keepalived still runs after the settle time.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.reload
    """
    conf = settings()
    check_file()
    if conf["service_mode"] != "process":
        __salt__["service.reload"](conf["service_name"])  # pylint: disable=undefined-variable
        return _settled(conf)
    pid = read_pid(_pid_files(conf)["main"])
    if not pid_alive(pid):
        raise CommandExecutionError("keepalived is not running: nothing to reload")
    os.kill(pid, signal.SIGHUP)
    return _settled(conf)


def version():
    """
    The keepalived version string.

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.version
    """
    binary = settings()["binary"]
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise CommandExecutionError(f"keepalived binary {binary!r} not found: install keepalived") from exc
    first = (proc.stdout + proc.stderr).strip().splitlines()
    return first[0] if first else ""


def status(node=None):
    """
    Per VRRP instance of this node: state and priority as keepalived last
    reported them (notify FIFO), the instance's VIPs actually present on the
    interface now, and whether the daemon runs (``running``; False while it
    is ``stopping``: every instance has recorded STOP, the second or so
    between a graceful stop's priority-0 advert and the process's exit).

    CLI Example:

    .. code-block:: bash

        salt-call keepalived.status
    """
    view = __salt__["edge_ha.node_view"](node=node)  # pylint: disable=undefined-variable
    conf = settings()
    alive = running()
    reported = read_instance_states(conf["state_dir"])
    present_by_if = {}
    instances = {}
    for inst in view["vrrp_instances"]:
        iface = inst["interface"]
        if iface not in present_by_if:
            present_by_if[iface] = interface_addresses(iface)
        seen = reported.get(inst["name"], {})
        instances[inst["name"]] = {
            "state": seen.get("state", "UNKNOWN"),
            "priority": seen.get("priority", inst["priority"]),
            "configured_priority": inst["priority"],
            "since": seen.get("time"),
            "interface": iface,
            "virtual_router_id": inst["virtual_router_id"],
            "vips": inst["vips"],
            "vips_present": [v for v in inst["vips"] if v in present_by_if[iface]],
        }
    stopping = alive and fleet.keepalived_stopping(
        {name: reported.get(name, {}) for name in instances}, _mtime(_pid_files(conf)["vrrp"]))
    return {"node": view["node"], "running": alive and not stopping, "stopping": stopping, "instances": instances}


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
