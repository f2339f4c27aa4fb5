"""
Checks of strings that reach keepalived.conf (or a Kubernetes API call).

keepalived reads its configuration line by line and token by token: a string
that holds a line break opens a new keyword or block, whitespace ends a token,
``#`` and ``!`` start a comment, braces open and close blocks, and a line
longer than keepalived's buffer (about 1 KiB) crashes ``keepalived -t``
itself (2.2.7 segfaults). Python's ``str.splitlines()`` (which rendering uses)
splits on ``\\v \\f \\x1c-\\x1e \\x85 U+2028 U+2029`` as well as ``\\n \\r``.

``bad_char`` rejects every character that is not printable in Python's sense:
all C0 and C1 control characters, NUL, DEL, the Unicode line and paragraph
separators, and the other non-printing characters (format characters,
unassigned code points, separators other than the ASCII space). Plain
functions, no Salt.
"""

import re

# keepalived's own syntax characters: blocks, quotes, comments, and the
# backslash (an escape; at the end of a line it joins the next one)
KEEPALIVED_SPECIAL = '{}"#!\\'

# A rendered line must stay well below keepalived's line buffer (1024 bytes in
# 2.2.7, longer lines make `keepalived -t` segfault).
MAX_SCRIPT = 512
MAX_STRING = 255

# Kubernetes (apimachinery validation)
DNS1123_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE_RE = LABEL_NAME_RE


def bad_char(value):
    """The first character of ``value`` that may not reach a config file, as a readable description, or None."""
    for pos, char in enumerate(value):
        if not char.isprintable():
            return f"control, line-break or other non-printing character U+{ord(char):04X} at position {pos}"
    return None


def describe(value):
    """A short, safe rendering of a (possibly huge or hostile) value for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def interface_problem(value):
    """Why ``value`` is not a Linux interface name (kernel ``dev_valid_name``), or None."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {describe(value)}"
    bad = bad_char(value)
    if bad:
        return f"must not contain a {bad}"
    if len(value.encode()) > 15:
        return f"{describe(value)} is {len(value.encode())} bytes; Linux interface names are 1-15 bytes"
    if value in (".", ".."):
        return f"{value!r} is not a valid interface name"
    if any(c.isspace() or c in "/:" for c in value):
        return f"{describe(value)} is not a valid interface name: no whitespace, '/' or ':'"
    if any(c in KEEPALIVED_SPECIAL for c in value):
        return f"{describe(value)} is not a valid interface name here: no braces, quotes, '#', '!' or backslashes"
    return None


def path_problem(value):
    """Why ``value`` is not an absolute path usable in keepalived.conf and a systemd unit line, or None."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {describe(value)}"
    bad = bad_char(value)
    if bad:
        return f"must not contain a {bad}"
    if not value.startswith("/"):
        return f"{describe(value)} must be an absolute path"
    if any(c.isspace() or c in KEEPALIVED_SPECIAL or c in "$%;" for c in value):
        return (f"{describe(value)} is not usable as a path here: no whitespace, braces, quotes, '#', '!', "
                "backslashes, '$', '%' or ';'")
    if len(value) > MAX_STRING:
        return f"is {len(value)} characters; at most {MAX_STRING}"
    return None


def settings_errors(conf, path_keys):
    """The node settings' problems (``keepalived.settings``), each naming its ``keepalived:`` key."""
    errors = [f"keepalived:{key} {problem}" for key in path_keys for problem in [path_problem(conf[key])] if problem]
    if conf["service_mode"] not in ("service", "process"):
        errors.append(f"keepalived:service_mode must be service or process, got {describe(conf['service_mode'])}")
    name = conf["service_name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9@._-]{1,255}", name):
        errors.append(f"keepalived:service_name must be a systemd unit name, got {describe(name)}")
    settle = conf["settle_time"]
    if isinstance(settle, bool) or not isinstance(settle, (int, float)) or not 0 <= settle <= 60:
        errors.append(f"keepalived:settle_time must be a number of seconds from 0 to 60, got {describe(settle)}")
    return errors


def dns1123_label_problem(value, what):
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {describe(value)}"
    if len(value) > 63 or not DNS1123_LABEL_RE.fullmatch(value):
        return (f"{describe(value)} is not a valid Kubernetes {what}: at most 63 characters of a-z 0-9 '-', "
                "starting and ending with a letter or digit")
    return None


def dns1035_label_problem(value, what):
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {describe(value)}"
    if len(value) > 63 or not DNS1035_LABEL_RE.fullmatch(value):
        return (f"{describe(value)} is not a valid Kubernetes {what}: at most 63 characters of a-z 0-9 '-', "
                "starting with a letter and ending with a letter or digit")
    return None


def dns1123_subdomain_problem(value, what):
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {describe(value)}"
    if len(value) > 253 or not DNS1123_SUBDOMAIN_RE.fullmatch(value):
        return (f"{describe(value)} is not a valid Kubernetes {what}: at most 253 characters of a-z 0-9 '-' '.', "
                "each part starting and ending with a letter or digit")
    return None


def _label_key_problem(key):
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns1123_subdomain_problem(prefix, "") is not None):
        return f"label key prefix {prefix!r} is not a DNS subdomain"
    if not name or len(name) > 63 or not LABEL_NAME_RE.fullmatch(name):
        return f"label key {key!r} is not valid (name part: at most 63 characters of A-Z a-z 0-9 - _ .)"
    return None


def _label_value_problem(value):
    if value and (len(value) > 63 or not LABEL_VALUE_RE.fullmatch(value)):
        return f"label value {value!r} is not valid (at most 63 characters of A-Z a-z 0-9 - _ .)"
    return None


_SET_RE = re.compile(r"\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)\s*")
_EQ_RE = re.compile(r"\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)\s*")
_EXISTS_RE = re.compile(r"\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*")


def _split_requirements(selector):
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += char
    parts.append(cur)
    return parts


def label_selector_problem(value):
    """Why ``value`` is not a Kubernetes label selector (``a=b,c!=d,e in (f,g),!h``), or None."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {describe(value)}"
    bad = bad_char(value)
    if bad:
        return f"must not contain a {bad}"
    if len(value) > 1024:
        return "is longer than 1024 characters"
    for req in _split_requirements(value):
        match = _SET_RE.fullmatch(req)
        if match:
            values = [v.strip() for v in match["values"].split(",")]
            problem = _label_key_problem(match["key"]) or next(
                (p for p in (_label_value_problem(v) for v in values) if p), None)
            if problem is None and not all(values):
                problem = f"empty value in {req.strip()!r}"
        elif (match := _EQ_RE.fullmatch(req)):
            problem = _label_key_problem(match["key"]) or _label_value_problem(match["value"])
        elif (match := _EXISTS_RE.fullmatch(req)):
            problem = _label_key_problem(match["key"])
        else:
            problem = f"{req.strip()!r} is not a requirement (key, !key, key=value, key!=value, key in (v1,v2))"
        if problem:
            return f"{describe(value)} is not a valid label selector: {problem}"
    return None
