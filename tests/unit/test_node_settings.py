"""keepalived's node settings (``keepalived:`` in the minion config, grains or
pillar): an unusable path or mode is refused naming its key, before any state
writes a config, a command line or a systemd drop-in with it."""

import pytest
from salt.exceptions import SaltInvocationError

from tests.support.modload import load

from edge_ha_core import desired

keepalived = load("_modules/keepalived.py")


@pytest.fixture
def node(monkeypatch):
    given = {}
    monkeypatch.setattr(keepalived, "__salt__", {"config.get": lambda key, default=None: given.get(key, default)},
                        raising=False)
    return given


def test_defaults_are_valid(node):
    assert keepalived.settings() == keepalived.DEFAULTS


def test_a_custom_config_file_is_kept(node):
    node["keepalived"] = {"config_file": "/etc/keepalived/edge.conf", "service_mode": "process", "settle_time": 2}
    conf = keepalived.settings()
    assert conf["config_file"] == "/etc/keepalived/edge.conf" and conf["service_mode"] == "process"


@pytest.mark.parametrize("key,value,text", [
    ("config_file", "keepalived.conf", "keepalived:config_file 'keepalived.conf' must be an absolute path"),
    ("config_file", "/etc/keepalived/my conf", "keepalived:config_file '/etc/keepalived/my conf' is not usable"),
    ("config_file", "/etc/k.conf\n[Service]", "keepalived:config_file must not contain a control"),
    ("state_dir", "/run/edge\u2028ha", "keepalived:state_dir must not contain a control"),
    ("notify_script", "/usr/local/sbin/x;reboot", "keepalived:notify_script '/usr/local/sbin/x;reboot' is not"),
    ("pid_dir", "", "keepalived:pid_dir must be a non-empty string"),
    ("service_pid_dir", ["/run"], "keepalived:service_pid_dir must be a non-empty string"),
    ("service_mode", "systemd", "keepalived:service_mode must be service or process, got 'systemd'"),
    ("service_name", "keepalived service", "keepalived:service_name must be a systemd unit name"),
    ("settle_time", "1.5", "keepalived:settle_time must be a number of seconds from 0 to 60, got '1.5'"),
    ("settle_time", True, "keepalived:settle_time must be a number"),
    ("settle_time", 600, "keepalived:settle_time must be a number"),
])
def test_unusable_setting_is_refused_naming_the_key(node, key, value, text):
    node["keepalived"] = {key: value}
    with pytest.raises(SaltInvocationError) as exc:
        keepalived.settings()
    assert text in str(exc.value)
    assert str(exc.value).count("keepalived:") == 1, "only the bad key is named"


def test_settings_that_are_not_a_mapping(node):
    node["keepalived"] = "/etc/keepalived/keepalived.conf"
    with pytest.raises(SaltInvocationError, match="keepalived .node settings. must be a mapping"):
        keepalived.settings()


@pytest.mark.parametrize("argv,expected", [
    (["/usr/sbin/keepalived", "--dont-fork"], "/etc/keepalived/keepalived.conf"),
    (["/usr/sbin/keepalived", "--dont-fork", "-f", "/etc/keepalived/edge.conf"], "/etc/keepalived/edge.conf"),
    (["keepalived", "-n", "-l", "-D", "-f/srv/k.conf", "-p", "/run/k.pid"], "/srv/k.conf"),
    (["keepalived", "--use-file=/srv/a.conf"], "/srv/a.conf"),
    (["keepalived", "--use-file", "/srv/a.conf", "-f", "/srv/b.conf"], "/srv/b.conf"),
    (["keepalived", "-D", "-p", "/run/k.pid"], "/etc/keepalived/keepalived.conf"),
])
def test_config_file_a_running_keepalived_reads(argv, expected):
    assert desired.config_file_of(argv) == expected
