# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import token_grammar, token_locations, token_plan, token_scanners
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout

OLD = "1a" * 32
NEW = "2b" * 32
PASSWORD = "s3cr3tPassw0rd-0123456789abcdef"
OTHER_PASSWORD = "another-Secret-fedcba9876543210"
K3S_VARS = get_layout("k3s").token_env_vars
ALL_VARS = get_layout("k3s").token_env_vars + get_layout("rke2").token_env_vars


def secure(password=PASSWORD, user="server", ca_hash=OLD):
    return "K10%s::%s:%s" % (ca_hash, user, password)


def rewrite(kind, text, *, tmp_path, name="file", pin_bare=False, token_env_vars=ALL_VARS, newline=""):
    path = tmp_path / name
    path.write_bytes(text.encode())
    kwargs = {"%s_files" % ("token" if kind == "token_file" else kind): [str(path)]}
    plan = token_plan.plan_join_tokens(new_hash=NEW, pin_bare=pin_bare, token_env_vars=token_env_vars, **kwargs)
    token_plan.apply_token_plan(plan, backup=False)
    return plan, path.read_bytes().decode()


def only_token_differs(before, after, old_token, new_token):
    assert after == before.replace(old_token, new_token)


def assert_no_secret(obj, *secrets):
    text = repr(obj) + str(obj)
    for secret in secrets or (PASSWORD, OTHER_PASSWORD):
        assert secret not in text


# --- parsing ------------------------------------------------------------------------------------

def test_parse_secure_token():
    token = token_grammar.parse_token(secure())
    assert (token.ca_hash, token.user, token.password, token.form, token.bootstrap) == (OLD, "server", PASSWORD,
                                                                                        "secure", False)
    assert token.prefix_length == 3 + 64 + 2


def test_parse_password_may_contain_colons():
    token = token_grammar.parse_token(secure(password="a:b::c"))
    assert (token.user, token.password) == ("server", "a:b::c")


def test_parse_bare_password_is_whole_text():
    token = token_grammar.parse_token("user:pass")  # k3s: no K10 prefix -> the whole text is the password
    assert (token.form, token.user, token.password, token.ca_hash, token.prefix_length) == ("bare", "", "user:pass",
                                                                                            "", 0)


def test_parse_bootstrap_tokens():
    token = token_grammar.parse_token("K10%s::abcdef.0123456789abcdef" % OLD)
    assert token.bootstrap and token.user is None and token.ca_hash == OLD
    bare = token_grammar.parse_token("abcdef.0123456789abcdef")
    assert bare.bootstrap and bare.form == "bare"


def test_parse_unpinned_forms():
    assert token_grammar.parse_token("K10::server:pw").form == "unpinned"
    token = token_grammar.parse_token("K10server:pw")  # no '::' at all: k3s reads user:password after K10
    assert (token.form, token.user, token.password, token.prefix_length) == ("unpinned", "server", "pw", 3)


@pytest.mark.parametrize("text, message", [
    ("", "token must not be empty"),
    ("K10abc::server:" + PASSWORD, "invalid token CA hash length"),
    ("K10%s::%s" % (OLD, PASSWORD), "invalid token format"),
    ("K10%s::server:" % OLD, "invalid token format"),
])
def test_parse_errors_do_not_leak(text, message):
    with pytest.raises(InvalidInputError) as caught:
        token_grammar.parse_token(text)
    assert message in str(caught.value)
    assert_no_secret(caught.value)


def test_repr_and_redacted_hide_password():
    token = token_grammar.parse_token(secure())
    assert_no_secret(token)
    assert token.redacted() == "K10%s...::server:<redacted>" % OLD[:12]
    assert token_grammar.parse_token(PASSWORD).redacted() == "<redacted>"
    assert "0123456789abcdef" not in token_grammar.parse_token("abcdef.0123456789abcdef").redacted()


def test_format_and_retoken():
    assert token_grammar.format_token(ca_hash=NEW, user="node", password="pw") == "K10%s::node:pw" % NEW
    assert token_grammar.retoken(secure(), NEW) == secure(ca_hash=NEW)
    assert token_grammar.retoken(secure(ca_hash=NEW), NEW) == secure(ca_hash=NEW)
    assert token_grammar.retoken("K10%s::abcdef.0123456789abcdef" % OLD, NEW) == "K10%s::abcdef.0123456789abcdef" % NEW


def test_retoken_bare_left_alone_unless_pinned():
    assert token_grammar.retoken(PASSWORD, NEW) == PASSWORD
    assert token_grammar.retoken("K10::server:pw", NEW) == "K10::server:pw"
    assert token_grammar.retoken(PASSWORD, NEW, pin_bare=True) == "K10%s::server:%s" % (NEW, PASSWORD)
    assert token_grammar.retoken(PASSWORD, NEW, pin_bare=True, bare_user="node") == "K10%s::node:%s" % (NEW, PASSWORD)
    assert token_grammar.retoken("K10::server:pw", NEW, pin_bare=True) == "K10%s::server:pw" % NEW
    assert token_grammar.retoken("abcdef.0123456789abcdef", NEW, pin_bare=True) == "K10%s::abcdef.0123456789abcdef" % NEW


def test_check_ca_hash():
    assert token_grammar.check_ca_hash(NEW.upper()) == NEW
    with pytest.raises(InvalidInputError):
        token_grammar.check_ca_hash("abc")
    with pytest.raises(InvalidInputError):
        token_grammar.check_ca_hash("g" * 64)


# --- config YAML --------------------------------------------------------------------------------

CONFIG = """# k3s config, managed by hand
write-kubeconfig-mode: "0644"   # keep
server: https://10.0.0.1:6443
token: {plain}   # join token
tls-san:
  - k3s.example.com
agent-token: "{double}"
'token-file': /etc/rancher/k3s/token-file
node-label:
  - "role=worker"
"""


def test_config_rewrite_keeps_every_other_byte(tmp_path):
    before = CONFIG.format(plain=secure(), double=secure(OTHER_PASSWORD, user="node"))
    plan, after = rewrite("config", before, tmp_path=tmp_path, name="config.yaml")
    expected = before.replace("K10" + OLD, "K10" + NEW)
    assert after == expected
    statuses = [(loc.key, loc.status) for f in plan.files for loc in f.locations]
    assert statuses == [("token", "changed"), ("agent-token", "changed"), ("token-file", "file-reference")]
    report = token_plan.plan_report(plan)
    assert report["file_references"] == ["/etc/rancher/k3s/token-file"]
    assert report["distinct_passwords"] == 2
    assert_no_secret(report)
    assert_no_secret(token_plan.plan_diff(plan))
    assert not plan.warnings  # token and agent-token may differ


def test_config_quoted_values_and_escapes(tmp_path):
    before = ('token: "K10%s::server:pa\\"ss\\\\w\\u00e9"\r\n'
              "agent-token: 'K10%s::node:it''s'\r\n") % (OLD, OLD)
    plan, after = rewrite("config", before, tmp_path=tmp_path)
    assert after == before.replace(OLD, NEW)
    assert "\r\n" in after


def test_config_plain_value_with_hash_and_comment(tmp_path):
    before = "token: K10%s::server:pa#ss #comment\n" % OLD
    _plan, after = rewrite("config", before, tmp_path=tmp_path)
    assert after == before.replace(OLD, NEW)


def test_config_duplicate_and_indented_keys(tmp_path):
    before = "token: %s\nnested:\n  token: %s\ntoken: %s\n" % (secure(), secure(), secure())
    plan, after = rewrite("config", before, tmp_path=tmp_path)
    lines = after.splitlines()
    assert lines[0] == "token: " + secure(ca_hash=NEW)
    assert lines[2] == "  token: " + secure()  # not top level: not a k3s key
    assert lines[3] == "token: " + secure(ca_hash=NEW)
    assert len(plan.files[0].locations) == 2


def test_config_document_markers(tmp_path):
    before = "---\n# c\ntoken: %s  # t\n...\n" % secure()
    _plan, after = rewrite("config", before, tmp_path=tmp_path)
    assert after == before.replace(OLD, NEW)


def test_config_without_token_and_null(tmp_path):
    plan, after = rewrite("config", "token: ~\nagent-token:\nserver: x\n", tmp_path=tmp_path)
    assert [loc.status for loc in plan.files[0].locations] == ["no-token"]
    assert not plan.changed


@pytest.mark.parametrize("text", [
    "token: |\n  K10%s::server:x\n" % OLD,
    "token:\n  K10%s::server:x\n" % OLD,
    "token: K10%s::server:x\n  continued\n" % OLD,
    "token: \"K10%s::server:x\n  continued\"\n" % OLD,
    "token: *anchor\n",
    "token: !!str K10%s::server:x\n" % OLD,
    "token: 'K10%s::server:x' trailing\n" % OLD,
    "{token: K10%s::server:%s}\n" % (OLD, PASSWORD),
])
def test_config_unsupported_forms_fail_naming_file(tmp_path, text):
    with pytest.raises(InvalidInputError) as caught:
        rewrite("config", text, tmp_path=tmp_path, name="odd.yaml")
    assert "odd.yaml" in str(caught.value)
    assert_no_secret(caught.value, PASSWORD, "server:x")


def test_config_broken_yaml_message_has_no_token(tmp_path):
    text = "token: %s\nother: [unclosed\n" % secure()
    with pytest.raises(InvalidInputError) as caught:
        rewrite("config", text, tmp_path=tmp_path, name="bad.yaml")
    assert "bad.yaml" in str(caught.value) and "line" in str(caught.value)
    assert_no_secret(caught.value)


def test_config_bare_token_reported_and_pinned_on_request(tmp_path):
    before = "token: %s\nagent-token: %s\n" % (PASSWORD, OTHER_PASSWORD)
    plan, after = rewrite("config", before, tmp_path=tmp_path)
    assert after == before and [loc.status for loc in plan.files[0].locations] == ["bare", "bare"]
    plan, after = rewrite("config", before, tmp_path=tmp_path, pin_bare=True)
    assert after == "token: K10%s::server:%s\nagent-token: K10%s::node:%s\n" % (NEW, PASSWORD, NEW, OTHER_PASSWORD)


def test_config_integer_bare_token_pinned(tmp_path):
    _plan, after = rewrite("config", "token: 12345678\n", tmp_path=tmp_path, pin_bare=True)
    assert after == "token: K10%s::server:12345678\n" % NEW


# --- env files ----------------------------------------------------------------------------------

def test_env_file_forms(tmp_path):
    before = ("# written by install.sh\n"
              "K3S_URL='https://10.0.0.1:6443'\n"
              "K3S_TOKEN='%s'\n"
              "export K3S_AGENT_TOKEN=\"%s\"   # agents\n"
              "  RKE2_TOKEN = %s\n"
              "K3S_TOKEN_FILE=/run/token\n"
              "CONTAINERD_HTTP_PROXY=http://proxy:3128\n"
              "K3S_TOKENX=%s\n") % (secure(), secure(user="node"), secure(), secure())
    plan, after = rewrite("env", before, tmp_path=tmp_path, name="k3s.service.env")
    expected = before.replace(secure(), secure(ca_hash=NEW), 2).replace(secure(user="node"),
                                                                        secure(user="node", ca_hash=NEW))
    assert after == expected
    assert after.endswith("K3S_TOKENX=%s\n" % secure())  # a different variable: untouched
    keys = [(loc.key, loc.status) for loc in plan.files[0].locations]
    assert keys == [("K3S_TOKEN", "changed"), ("K3S_AGENT_TOKEN", "changed"), ("RKE2_TOKEN", "changed"),
                    ("K3S_TOKEN_FILE", "file-reference")]


def test_env_file_crlf_and_escapes(tmp_path):
    before = 'K3S_TOKEN="K10%s::server:p\\"w\\$x"\r\nK3S_URL=https://a\r\n' % OLD
    _plan, after = rewrite("env", before, tmp_path=tmp_path)
    assert after == before.replace(OLD, NEW)


def test_env_file_variable_reference_left_alone(tmp_path):
    before = 'K3S_TOKEN="${MY_TOKEN}"\nRKE2_TOKEN=$(cat /x)\n'
    plan, after = rewrite("env", before, tmp_path=tmp_path)
    assert after == before
    assert [loc.status for loc in plan.files[0].locations] == ["variable-reference"] * 2


def test_env_file_only_distribution_vars(tmp_path):
    before = "RKE2_TOKEN=%s\n" % secure()
    plan, after = rewrite("env", before, tmp_path=tmp_path, token_env_vars=K3S_VARS)
    assert after == before and plan.files[0].locations[0].status == "no-token"


@pytest.mark.parametrize("text", [
    "K3S_TOKEN=\"%s\n" % secure(),
    "K3S_TOKEN=%s extra\n" % secure(),
    "K3S_TOKEN=%s\\\n" % secure(),
])
def test_env_file_unsupported(tmp_path, text):
    with pytest.raises(InvalidInputError) as caught:
        rewrite("env", text, tmp_path=tmp_path, name="k3s.env")
    assert "k3s.env" in str(caught.value)
    assert_no_secret(caught.value)


# --- unit files ---------------------------------------------------------------------------------

UNIT = """[Unit]
Description=Lightweight Kubernetes

[Service]
Type=notify
EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env
Environment="K3S_TOKEN={env_token}" "OTHER=1"
ExecStart=/usr/local/bin/k3s \\
    agent \\
    '--server' 'https://10.0.0.1:6443' \\
    '--token' \\
    '{flag_token}' \\
# comment inside a continuation
    --agent-token={agent_token} -t "{short}" \\
    --token-file /etc/token \\
    --node-label=x=y
Restart=always
"""


def test_unit_file_flags_and_continuations(tmp_path):
    before = UNIT.format(env_token=secure(), flag_token=secure(), agent_token=secure(user="node"),
                         short=secure(OTHER_PASSWORD))
    plan, after = rewrite("unit", before, tmp_path=tmp_path, name="k3s-agent.service")
    assert after == before.replace("K10" + OLD, "K10" + NEW)
    found = [(loc.key, loc.line, loc.status) for loc in plan.files[0].locations]
    assert found == [("K3S_TOKEN", 7, "changed"), ("--token", 12, "changed"), ("--agent-token", 14, "changed"),
                     ("-t", 14, "changed"), ("--token-file", 15, "file-reference")]
    assert token_plan.plan_report(plan)["daemon_reload_needed"] is True
    assert len(plan.warnings) == 1 and "2 different passwords" in plan.warnings[0]
    assert_no_secret(plan.warnings)
    groups = [loc.password_group for loc in plan.files[0].locations]
    assert groups[:4] == [1, 1, 1, 2]


def test_unit_file_crlf_single_dash_and_equals(tmp_path):
    before = "[Service]\r\nExecStart=/usr/bin/k3s server -token=%s \\\r\n  --t %s\r\n" % (secure(), secure())
    plan, after = rewrite("unit", before, tmp_path=tmp_path)
    assert after == before.replace(OLD, NEW)
    assert [loc.line for loc in plan.files[0].locations] == [2, 3]


def test_unit_file_variable_and_escaped_prefix(tmp_path):
    plan, after = rewrite("unit", "[Service]\nExecStart=/k3s agent --token ${K3S_TOKEN}\n", tmp_path=tmp_path)
    assert plan.files[0].locations[0].status == "variable-reference" and not plan.changed
    with pytest.raises(InvalidInputError) as caught:
        rewrite("unit", "[Service]\nExecStart=/k3s agent --token K1\\x30%s::server:%s\n" % (OLD, PASSWORD),
                tmp_path=tmp_path, name="weird.service")
    assert "weird.service" in str(caught.value)
    assert_no_secret(caught.value)


def test_unit_file_percent_escape_same_password(tmp_path):
    unit = "[Service]\nExecStart=/k3s agent --token K10%s::server:p%%%%w\n" % OLD
    env = tmp_path / "env"
    env.write_text("K3S_TOKEN=K10%s::server:p%%w\n" % OLD)
    path = tmp_path / "unit"
    path.write_text(unit)
    plan = token_plan.plan_join_tokens(new_hash=NEW, env_files=[str(env)], unit_files=[str(path)], token_env_vars=ALL_VARS)
    assert not plan.warnings and token_plan.plan_report(plan)["distinct_passwords"] == 1
    token_plan.apply_token_plan(plan, backup=False)
    assert path.read_text() == unit.replace(OLD, NEW)


def test_unit_file_flag_without_value(tmp_path):
    with pytest.raises(InvalidInputError):
        rewrite("unit", "[Service]\nExecStart=/k3s agent --token\n", tmp_path=tmp_path)


# --- token files --------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_token_file_keeps_trailing_newline_state(tmp_path, ending):
    _plan, after = rewrite("token_file", secure() + ending, tmp_path=tmp_path, name="token")
    assert after == secure(ca_hash=NEW) + ending


def test_token_file_multiline_and_empty(tmp_path):
    with pytest.raises(InvalidInputError) as caught:
        rewrite("token_file", secure() + "\n" + secure() + "\n", tmp_path=tmp_path, name="token")
    assert_no_secret(caught.value)
    plan, _after = rewrite("token_file", "\n", tmp_path=tmp_path, name="empty")
    assert plan.files[0].locations[0].status == "no-token"


def test_agent_token_file_role_and_pin(tmp_path):
    plan, after = rewrite("token_file", PASSWORD + "\n", tmp_path=tmp_path, name="agent-token", pin_bare=True)
    assert after == "K10%s::node:%s\n" % (NEW, PASSWORD)


# --- planning, idempotence, files ---------------------------------------------------------------

def test_idempotent_and_mode_kept_with_backup(tmp_path):
    path = tmp_path / "config.yaml"
    before = "token: %s\n" % secure()
    path.write_text(before)
    os.chmod(path, 0o640)
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(path)])
    assert plan.changed
    backups = token_plan.apply_token_plan(plan, backup_suffix="20260101T000000Z")
    assert backups == [str(path) + ".20260101T000000Z.bak"]
    assert (tmp_path / "config.yaml.20260101T000000Z.bak").read_text() == before
    assert stat.S_IMODE(os.stat(backups[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    again = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(path)])
    assert not again.changed
    assert [loc.status for loc in again.files[0].locations] == ["unchanged"]
    assert token_plan.apply_token_plan(again) == []


def test_missing_glob_and_symlink_dedup(tmp_path):
    real = tmp_path / "token"
    real.write_text(secure() + "\n")
    (tmp_path / "node-token").symlink_to(real)
    drop_in = tmp_path / "config.yaml.d"
    drop_in.mkdir()
    (drop_in / "10-token.yaml").write_text("token: %s\n" % secure())
    (drop_in / "20-other.yaml").write_text("node-label: [a=b]\n")
    plan = token_plan.plan_join_tokens(
        new_hash=NEW, config_files=[str(tmp_path / "config.yaml"), str(drop_in / "*.yaml")],
        token_files=[str(tmp_path / "node-token"), str(real)])
    statuses = [(os.path.basename(loc.path), loc.status) for f in plan.files for loc in f.locations]
    assert statuses == [("config.yaml", "missing"), ("10-token.yaml", "changed"), ("20-other.yaml", "no-token"),
                        ("node-token", "changed")]
    assert plan.files[-1].locations[0].file == str(real)
    token_plan.apply_token_plan(plan, backup=False)
    assert (tmp_path / "node-token").is_symlink()
    assert real.read_text() == secure(ca_hash=NEW) + "\n"


def test_different_passwords_keep_their_own(tmp_path):
    one, two = tmp_path / "a.yaml", tmp_path / "b.yaml"
    one.write_text("token: %s\n" % secure())
    two.write_text("token: %s\n" % secure(OTHER_PASSWORD))
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(one), str(two)])
    token_plan.apply_token_plan(plan, backup=False)
    assert one.read_text() == "token: %s\n" % secure(ca_hash=NEW)
    assert two.read_text() == "token: %s\n" % secure(OTHER_PASSWORD, ca_hash=NEW)
    assert len(plan.warnings) == 1 and "a.yaml:1" in plan.warnings[0] and "b.yaml:1" in plan.warnings[0]
    assert_no_secret(plan.warnings)
    assert_no_secret(token_plan.plan_report(plan))
    assert PASSWORD in plan.secrets and OTHER_PASSWORD in plan.secrets


def test_report_and_diff_hold_no_secret(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("token: %s\nagent-token: %s\n" % (secure(), OTHER_PASSWORD))
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(config)])
    report = token_plan.plan_report(plan)
    diff = token_plan.plan_diff(plan)
    assert_no_secret(report)
    assert_no_secret(diff)
    assert_no_secret(plan.files)
    assert diff[0]["before"] == "line 1: token: K10%s...::server:<redacted>\n" % OLD[:12]
    assert diff[0]["after"] == "line 1: token: K10%s...::server:<redacted>\n" % NEW[:12]
    first = report["locations"][0]
    assert first["old_hash"] == OLD[:12] and first["new_hash"] == NEW[:12] and first["user"] == "server"
    assert report["locations"][1]["status"] == "bare"


def test_unparsable_token_names_file_not_value(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("token: K10abcdef::server:%s\n" % PASSWORD)
    with pytest.raises(InvalidInputError) as caught:
        token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(config)])
    assert str(config) in str(caught.value) and "hash length" in str(caught.value)
    assert_no_secret(caught.value)


def test_directory_and_unreadable(tmp_path):
    with pytest.raises(InvalidInputError) as caught:
        token_plan.plan_join_tokens(new_hash=NEW, env_files=[str(tmp_path)])
    assert str(tmp_path) in str(caught.value)
    if os.geteuid() == 0:
        return  # root reads anything
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "env").write_text("K3S_TOKEN=%s\n" % secure())
    os.chmod(locked, 0)
    try:
        with pytest.raises(InvalidInputError) as caught:
            token_plan.plan_join_tokens(new_hash=NEW, env_files=[str(locked / "env")])
        assert "locked/env" in str(caught.value)
    finally:
        os.chmod(locked, 0o700)


def test_discover_from_layout(tmp_path):
    layout = get_layout("k3s")
    root = tmp_path / "root"
    for relative, content in [
        ("etc/rancher/k3s/config.yaml", "write-kubeconfig-mode: '0644'\n"),
        ("etc/rancher/k3s/config.yaml.d/10-token.yaml", "token: %s\n" % secure()),
        ("etc/systemd/system/k3s.service.env", "K3S_TOKEN=%s\n" % secure()),
        ("etc/systemd/system/k3s.service", "[Service]\nExecStart=/usr/local/bin/k3s server\n"),
        ("var/lib/rancher/k3s/server/token", secure() + "\n"),
    ]:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (root / "var/lib/rancher/k3s/server/agent-token").symlink_to(root / "var/lib/rancher/k3s/server/token")
    discovered = token_locations.discover_locations(layout, root=str(root))
    plan = token_plan.plan_join_tokens(new_hash=NEW, discovered=discovered, token_env_vars=layout.token_env_vars)
    found = sorted(os.path.relpath(f.path, str(root)) for f in plan.files)
    assert found == ["etc/rancher/k3s/config.yaml.d/10-token.yaml", "etc/systemd/system/k3s.service.env",
                     "var/lib/rancher/k3s/server/token"]
    assert all(loc.status == "changed" for f in plan.files for loc in f.locations)
    preflight = token_locations.token_files_on_node(layout, root=str(root))
    assert [(os.path.relpath(e["path"], str(root)), e["keys"], e["problem"]) for e in preflight] == [
        ("etc/rancher/k3s/config.yaml.d/10-token.yaml", ["token"], None),
        ("etc/systemd/system/k3s.service.env", ["K3S_TOKEN"], None),
        ("var/lib/rancher/k3s/server/token", ["file"], None)]
    assert_no_secret(preflight)
    (root / "etc/systemd/system/k3s.service.env").write_text("K3S_TOKEN=\"%s\n" % secure())
    problem = token_locations.token_files_on_node(layout, root=str(root))[1]["problem"]
    assert "k3s.service.env line 1" in problem
    assert_no_secret(problem)


def test_scanners_report_offsets():
    text = "token: %s\n" % secure()
    (occurrence,) = token_scanners.scan_config(text)
    assert text[occurrence.start:occurrence.end] == secure()
    assert PASSWORD not in repr(occurrence)
    with pytest.raises(InvalidInputError):
        token_scanners.scan("nope", text, path="x")


# --- backup_root (the backup module's layout) ---------------------------------------------------

def _mode(path):
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def test_backup_root_copies_changed_files_at_their_real_path(tmp_path):
    etc = tmp_path / "etc" / "rancher" / "k3s"
    etc.mkdir(parents=True)
    config = etc / "config.yaml"
    config_before = "node-name: s1\ntoken: %s\n" % secure()
    config.write_text(config_before)
    os.chmod(str(config), 0o640)
    real_token = tmp_path / "server" / "token"
    real_token.parent.mkdir()
    real_token.write_text(secure() + "\n")
    os.chmod(str(real_token), 0o600)
    link = tmp_path / "node-token"
    link.symlink_to(real_token)
    unchanged = etc / "already.yaml"
    unchanged.write_text("token: %s\n" % secure(ca_hash=NEW))
    no_token = etc / "labels.yaml"
    no_token.write_text("node-label: [a=b]\n")
    root = tmp_path / "backup" / "20261122T120000Z"
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(config), str(unchanged), str(no_token)],
                                       token_files=[str(link)])
    assert [f.changed for f in plan.files] == [True, False, False, True]

    backups = token_plan.apply_token_plan(plan, backup_root=str(root) + "/", backup_suffix="20260101T000000Z")

    config_copy = str(root) + os.path.realpath(str(config))
    token_copy = str(root) + os.path.realpath(str(real_token))
    unchanged_copy = str(root) + os.path.realpath(str(unchanged))
    assert backups == [config_copy, unchanged_copy, token_copy]
    with open(config_copy) as handle:
        assert handle.read() == config_before
    with open(token_copy) as handle:
        assert handle.read() == secure() + "\n"
    assert _mode(config_copy) == 0o600 and _mode(token_copy) == 0o600
    assert os.path.isfile(token_copy) and not os.path.islink(token_copy)
    # The backup root and the directories holding the copies are private.
    assert _mode(root) == 0o700
    assert _mode(os.path.dirname(config_copy)) == 0o700
    assert _mode(os.path.dirname(token_copy)) == 0o700
    # A file whose token does not change is copied too (rollback restores every token location); a file without a
    # token is not; nothing lands next to the originals.
    with open(unchanged_copy) as handle:
        assert handle.read() == "token: %s\n" % secure(ca_hash=NEW)
    assert not os.path.exists(str(root) + os.path.realpath(str(no_token)))
    assert sorted(os.listdir(str(etc))) == ["already.yaml", "config.yaml", "labels.yaml"]
    assert not [name for name in os.listdir(str(tmp_path / "server")) if name.endswith(".bak")]
    # The originals are rewritten, their modes kept.
    assert config.read_text() == "node-name: s1\ntoken: %s\n" % secure(ca_hash=NEW)
    assert real_token.read_text() == secure(ca_hash=NEW) + "\n"
    assert _mode(config) == 0o640
    assert link.is_symlink()


def test_backup_root_takes_precedence_over_backup_false(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("token: %s\n" % secure())
    root = tmp_path / "b"
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(path)])
    backups = token_plan.apply_token_plan(plan, backup=False, backup_root=str(root))
    assert backups == [str(root) + os.path.realpath(str(path))]
    with open(backups[0]) as handle:
        assert handle.read() == "token: %s\n" % secure()


def test_backup_root_rerun_after_rewrite_copies_nothing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("token: %s\n" % secure())
    root = tmp_path / "b"
    token_plan.apply_token_plan(token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(path)]), backup_root=str(root))
    copy = str(root) + os.path.realpath(str(path))
    again = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(path)])
    assert token_plan.apply_token_plan(again, backup_root=str(root)) == []
    # The first copy (the pre-rotation content) is still there, not overwritten.
    with open(copy) as handle:
        assert handle.read() == "token: %s\n" % secure()


def test_backup_root_copy_already_there_is_kept_and_pending_lists_the_missing(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text("token: %s\n" % secure())
    second = tmp_path / "second.yaml"
    second.write_text("token: %s\n" % secure(ca_hash=NEW))
    root = tmp_path / "b"
    first_copy = str(root) + os.path.realpath(str(first))
    second_copy = str(root) + os.path.realpath(str(second))
    os.makedirs(os.path.dirname(first_copy))
    with open(first_copy, "w") as handle:
        handle.write("an earlier copy")
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(first), str(second)])
    assert token_plan.pending_backups(plan, str(root)) == [second_copy]
    assert token_plan.pending_backups(plan, None) == []
    assert token_plan.apply_token_plan(plan, backup_root=str(root)) == [second_copy]
    with open(first_copy) as handle:
        assert handle.read() == "an earlier copy"
    assert first.read_text() == "token: %s\n" % secure(ca_hash=NEW)
    assert token_plan.pending_backups(token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(first), str(second)]),
                                      str(root)) == []


def test_without_backup_root_the_copy_stays_next_to_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("token: %s\n" % secure())
    plan = token_plan.plan_join_tokens(new_hash=NEW, config_files=[str(path)])
    backups = token_plan.apply_token_plan(plan, backup_root=None, backup_suffix="20261122T120000Z")
    assert backups == [str(path) + ".20261122T120000Z.bak"]
    assert (tmp_path / "config.yaml.20261122T120000Z.bak").read_text() == "token: %s\n" % secure()
    assert _mode(backups[0]) == 0o600
    assert sorted(os.listdir(str(tmp_path))) == ["config.yaml", "config.yaml.20261122T120000Z.bak"]


def test_backup_root_parents_are_all_private(tmp_path):
    from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import ensure_dir
    target = tmp_path / "backup" / "etc" / "rancher" / "k3s"
    assert ensure_dir(str(target))
    for directory in (tmp_path / "backup", tmp_path / "backup" / "etc", tmp_path / "backup" / "etc" / "rancher", target):
        assert oct(os.stat(directory).st_mode & 0o777) == oct(0o700), directory
    assert not ensure_dir(str(target))
