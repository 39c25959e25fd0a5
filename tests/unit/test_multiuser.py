"""Multi-user endpoint pieces without the broker: the template and schema, the identity
mapping (expression rules, external commands, reloads), the privilege drop, the allow-list and
the audit log."""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpiengine.multiuser.allowlist import AllowList, function_hash
from mpiengine.multiuser.audit import AuditError, AuditLog
from mpiengine.multiuser.mapping import IdentityMap
from mpiengine.multiuser.privileges import drop_privileges
from mpiengine.multiuser.template import UserConfigTemplate
from mpiengine_sdk.errors import AuthorizationError, ConfigError
from mpiengine_sdk.wire import TaskKind, TaskMessage
from tests.conftest import require

SCHEMA = {
    "type": "object",
    "properties": {
        "account": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "nodes": {"type": "integer", "minimum": 1, "maximum": 4},
        "worker_init": {"type": "string"},
    },
    "required": ["account"],
    "additionalProperties": False,
}
TEMPLATE = """backend: batch
backend_options:
  provider: slurm
  account: {{ account }}
  nodes_per_block: {{ nodes | default(1) }}
  worker_init: {{ worker_init | default('') }}
environment:
  MU_HOME: {{ user.home }}
"""
RESERVED = {"user": {"name": "mu-x", "uid": 1234, "gid": 1234, "home": "/home/mu-x"}}


def template(text: str = TEMPLATE, **kw: object) -> UserConfigTemplate:
    return UserConfigTemplate(text, SCHEMA, **kw)  # type: ignore[arg-type]


def test_template_renders_validated_variables() -> None:
    out = template().render({"account": "proj1", "nodes": 2}, RESERVED)
    assert out["backend"] == "batch"
    assert out["backend_options"] == {
        "provider": "slurm",
        "account": "proj1",
        "nodes_per_block": 2,
        "worker_init": "",
    }
    assert out["environment"] == {"MU_HOME": "/home/mu-x"}


def test_a_value_cannot_break_out_of_yaml() -> None:
    evil = 'x\nrm -rf ~\nengine: embedded\n"]: {'
    out = template().render({"account": "p", "worker_init": evil}, RESERVED)
    assert out["backend"] == "batch"
    assert out["backend_options"]["worker_init"] == evil  # one inert string, as sent


@pytest.mark.parametrize(
    ("variables", "key", "rule"),
    [
        ({"account": "p", "nodes": 9}, "user_config.nodes", "maximum"),
        ({"account": "P; rm -rf ~"}, "user_config.account", "pattern"),
        ({}, "user_config.account", "required"),
        ({"account": "p", "queue": "x"}, "user_config.queue", "additionalProperties"),
        ({"account": "p", "user": "root"}, "user_config.user", "reserved"),
    ],
)
def test_schema_failures_name_the_variable_and_rule(
    variables: dict[str, object], key: str, rule: str
) -> None:
    with pytest.raises(ConfigError) as info:
        template().render(variables, RESERVED)
    assert info.value.key == key
    assert rule in str(info.value)


def test_user_config_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="user_config: must be a mapping"):
        template().render(["account"], RESERVED)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "engine: {{ ''.__class__ }}",
        "engine: {{ ''.__class__.__mro__[1].__subclasses__() }}",
        "engine: {{ account.__init__.__globals__ }}",
        "engine: {{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_template_cannot_reach_python_internals(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        template(text).render({"account": "p"}, RESERVED)
    assert info.value.key == "user_config_template"


def test_missing_variable_is_an_error_not_empty() -> None:
    with pytest.raises(ConfigError, match="undefined"):
        template("backend: batch\nbackend_options: {q: {{ queue }}}\n").render(
            {"account": "p"}, RESERVED
        )


def test_rendered_config_cannot_override_policy() -> None:
    t = template(
        "backend: embedded\nbackend_options: {workdir: /tmp/x, nodes: 1}\n", policy_keys=["workdir"]
    )
    with pytest.raises(ConfigError, match="backend_options.workdir: is fixed by the endpoint"):
        t.render({"account": "p"}, RESERVED)
    with pytest.raises(ConfigError, match="unknown key"):
        template("engine: embedded\nprefetch: 100\n").render({"account": "p"}, RESERVED)
    with pytest.raises(ConfigError, match="embedded or batch"):
        template("engine: mymod:factory\n").render({"account": "p"}, RESERVED)


def test_shell_quote_filter() -> None:
    out = template(
        "engine: batch\nengine_options: {worker_init: {{ ('cd ' ~ account) | shell_quote }}}\n"
    ).render({"account": "p"}, RESERVED)
    assert out["backend_options"]["worker_init"] == "'cd p'"


# -- identity mapping --------------------------------------------------------------------------
def _expr(match: str, output: str) -> dict[str, object]:
    return {
        "DATA_TYPE": "expression_identity_mapping#1.0.0",
        "mappings": [{"source": "{username}", "match": match, "output": output}],
    }


def test_expression_mapping_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps([_expr("(.*)@site", "{0}"), _expr("boss", "root")]))
    ids = IdentityMap(path)
    assert ids.account("nobody@site").pw_name == "nobody"
    with pytest.raises(AuthorizationError, match="is not mapped") as a:
        ids.account("someone")
    with pytest.raises(AuthorizationError, match="not a local account") as b:
        ids.account("no-such-user-xyz@site")
    with pytest.raises(AuthorizationError, match="uid 0") as c:
        ids.account("boss")
    assert {a.value.code, b.value.code, c.value.code} == {"unmapped", "no_account", "root_refused"}


def test_external_mapping_command(tmp_path: Path) -> None:
    script = tmp_path / "mapper.py"
    script.write_text(
        "import json, sys\n"
        "doc = json.load(sys.stdin)\n"
        "ident = doc['identities'][0]\n"
        "if ident['username'] != 'ext-user':\n"
        "    sys.exit(1)\n"
        "print(json.dumps({'DATA_TYPE': 'identity_mapping_output#1.0.0',\n"
        "                  'result': [{'id': ident['id'], 'output': 'nobody'}]}))\n"
    )
    path = tmp_path / "map.json"
    doc = {"DATA_TYPE": "external_identity_mapping#1.0.0", "command": [sys.executable, str(script)]}
    path.write_text(json.dumps([doc]))
    ids = IdentityMap(path, "ep")
    assert ids.account("ext-user").pw_name == "nobody"
    with pytest.raises(AuthorizationError, match="is not mapped"):
        ids.account("other")


def test_mapping_reloads_and_keeps_the_old_one_when_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps([_expr("a", "nobody")]))
    ids = IdentityMap(path)
    assert ids.local_name("a") == "nobody"
    path.write_text(json.dumps([_expr("b", "nobody")]))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert (ids.local_name("a"), ids.local_name("b")) == (None, "nobody")
    path.write_text("[{not json")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert ids.local_name("b") == "nobody"
    assert "invalid; keeping the old one" in caplog.text


def test_an_invalid_mapping_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"DATA_TYPE": "x"}))
    with pytest.raises(ConfigError, match="non-empty JSON list"):
        IdentityMap(path)
    path.write_text(json.dumps([{"DATA_TYPE": "unknown_mapping#1.0.0"}]))
    with pytest.raises(ConfigError, match="unknown DATA_TYPE"):
        IdentityMap(path)


# -- privileges --------------------------------------------------------------------------------
def test_privilege_drop_is_irreversible() -> None:
    require(os.geteuid() == 0, "root", "run the unit tests as root (CI does)")
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it sees, then exits without cleanup
        os.close(read)
        try:
            drop_privileges(nobody)
            try:
                os.setuid(0)
                back = "root again"
            except PermissionError:
                back = "refused"
            info = [os.getresuid(), os.getresgid(), os.getgroups(), back, os.umask(0)]
            os.write(write, json.dumps(info).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = json.loads(f.read())
    os.waitpid(pid, 0)
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert data[0] == [uid] * 3 and data[1] == [gid] * 3
    assert 0 not in data[2]
    assert data[3] == "refused" and data[4] == 0o077


def test_privilege_drop_refuses_root() -> None:
    with pytest.raises(RuntimeError, match="uid 0"):
        drop_privileges(pwd.getpwnam("root"))


# -- allow-list --------------------------------------------------------------------------------
def shell(argv: list[str], script: str | None = None) -> TaskMessage:
    return TaskMessage("t1", TaskKind.SHELL, {}, argv=tuple(argv), script=script)


def test_allow_list_commands_scripts_functions() -> None:
    def allowed() -> int:
        return 1

    def other() -> int:
        return 2

    allow = AllowList.parse(
        {
            "commands": [
                {"executable": "/usr/bin/id"},
                {"executable": "/bin/echo", "args": "hello( .*)?"},
            ],
            "scripts": [{"pattern": "echo [a-z]+"}],
            "functions": [{"sha256": function_hash(allowed)}],
        }
    )
    allow.check_command(shell(["id", "-un"]))
    allow.check_command(shell(["/usr/bin/id"]))
    allow.check_command(shell(["echo", "hello", "world"]))
    allow.check_command(shell([], script="echo abc"))
    for bad in (shell(["echo", "bye"]), shell(["ls"]), shell([], script="echo abc; rm x")):
        with pytest.raises(AuthorizationError, match="not on the endpoint's allow-list"):
            allow.check_command(bad)
    allow.check_function("t", allowed)
    with pytest.raises(AuthorizationError, match="function .*other"):
        allow.check_function("t", other)
    assert AllowList.parse(allow.as_dict()) == allow


def test_allow_list_refuses_bad_entries() -> None:
    with pytest.raises(ConfigError, match=r"commands\[0\].executable"):
        AllowList.parse({"commands": [{"executable": "id"}]})
    with pytest.raises(ConfigError, match="invalid regex"):
        AllowList.parse({"commands": [{"executable": "/bin/id", "args": "("}]})


def test_function_hash_ignores_where_it_was_defined() -> None:
    src = "def f(x):\n    return x + 1\n"
    a: dict[str, object] = {}
    b: dict[str, object] = {}
    exec(compile(src, "one.py", "exec"), a)
    exec(compile("\n\n" + src, "two.py", "exec"), b)
    assert function_hash(a["f"]) == function_hash(b["f"])  # type: ignore[arg-type]
    exec(compile(src.replace("1", "2"), "one.py", "exec"), b)
    assert function_hash(a["f"]) != function_hash(b["f"])  # type: ignore[arg-type]


# -- audit -------------------------------------------------------------------------------------
def test_audit_log_lines_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.write("received", task_id="t1", principal="p")
    log.write("ended", task_id="t1", principal="p", local_user="u", uid=5, outcome="completed")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["received", "ended"]
    assert set(lines[1]) == {
        "time",
        "event",
        "principal",
        "local_user",
        "uid",
        "task_id",
        "block_id",
        "job_id",
        "outcome",
    }


def test_audit_log_failures_are_loud(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(AuditError, match="cannot open the audit log"):
        log.write("received", task_id="t", principal="p")
    path.rmdir()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AuditError):
        log.write("received", task_id="t", principal="p")


# -- render-config -----------------------------------------------------------------------------
def test_render_config_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mpiengine.cli.endpoint import endpoint

    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path))
    runner = CliRunner()
    done = runner.invoke(endpoint, ["configure", "mu", "--multi-user"])
    assert done.exit_code == 0, done.output
    root = tmp_path / "mu"
    (root / "identity_mapping.json").write_text(json.dumps([_expr("(.*)", "nobody")]))
    (root / "user_config_template.yaml.j2").write_text(TEMPLATE)
    (root / "user_config_schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "vars.json").write_text(json.dumps({"account": "proj", "nodes": 3}))
    args = ["render-config", "mu", "--vars", str(tmp_path / "vars.json"), "--principal", "x"]
    done = runner.invoke(endpoint, args)
    assert done.exit_code == 0, done.output
    assert "account: proj" in done.output and "nodes_per_block: 3" in done.output
    assert f"MU_HOME: {pwd.getpwnam('nobody').pw_dir}" in done.output
    (tmp_path / "vars.json").write_text(json.dumps({"account": "proj", "nodes": 7}))
    done = runner.invoke(endpoint, args)
    assert done.exit_code != 0 and "user_config.nodes" in done.output


# -- SDK ---------------------------------------------------------------------------------------
def test_executor_sends_user_config_and_checks_it_at_the_edge() -> None:
    from mpiengine.service.backends import NullBackend
    from mpiengine_sdk import Executor, ShellFunction

    with Executor(backend=NullBackend(), user_config={"account": "p", "nodes": 2}) as ex:
        task = ex.prepare(ShellFunction(["id"]), (), {})
        assert task.user_config == {"account": "p", "nodes": 2}
        assert ex.submit(ShellFunction(["id"])).result(10).returncode == 0
    with Executor(backend=NullBackend()) as ex:
        assert ex.prepare(ShellFunction(["id"]), (), {}).user_config == {}
    with pytest.raises(ConfigError, match="user_config: values must be JSON"):
        Executor(backend=NullBackend(), user_config={"x": object()})
    with pytest.raises(ConfigError, match="user_config: must be a mapping"):
        Executor(backend=NullBackend(), user_config=["x"])  # type: ignore[arg-type]


def test_a_template_with_the_old_engine_keys_still_renders_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = template("engine: batch\nengine_options: {partition: debug}\n")
    with caplog.at_level("WARNING", logger="mpiengine.multiuser.template"):
        out = old.render({"account": "p"}, RESERVED)
    assert out["backend"] == "batch" and out["backend_options"] == {"partition": "debug"}
    assert "'engine' is now 'backend'" in caplog.text
    assert "'engine_options' is now 'backend_options'" in caplog.text
    both = template("engine: batch\nbackend: embedded\n")
    with pytest.raises(ConfigError, match="both 'engine' and its new name 'backend'"):
        both.render({"account": "p"}, RESERVED)
