"""Task types: construction checks, and the TaskMessage each one makes."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
from pathlib import Path

import dill
import pytest

from mpiengine_sdk.errors import SerializationError, SpecError, TemplateError
from mpiengine_sdk.functions import MPIFunction, MPIPythonFunction, ShellFunction, python_task
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.wire import TaskKind, decode_task, encode_task

SPEC = ResourceSpec()


def add(a: int, b: int = 0) -> int:
    return a + b


class FakeComm:
    rank = 3
    size = 4


class TestShellFunctionTemplate:
    def test_renders_quoted_script(self):
        fn = ShellFunction("echo {msg} > {out}")
        task = fn.to_task("t1", (), {"msg": "a; rm -rf /", "out": "o u t"}, SPEC)
        assert task.kind is TaskKind.SHELL
        assert task.script == "echo 'a; rm -rf /' > 'o u t'"
        assert task.argv == ()
        assert task.task_id == "t1"
        assert task.name == "echo"
        assert task.snippet_lines == 1000
        assert task.payload == b""

    def test_rendered_script_runs_with_values_verbatim(self, tmp_path):
        fn = ShellFunction("printf '%s\\n' {a} {b} > {out}")
        value = "$(touch pwned); `x` 'q' \"d\""
        out = tmp_path / "o u t.txt"
        task = fn.to_task("t", (), {"a": value, "b": ["1 2", "3"], "out": out}, SPEC)
        assert task.script is not None
        subprocess.run(["bash", "-c", task.script], cwd=tmp_path, check=True, timeout=30)
        assert out.read_text() == f"{value}\n1 2\n3\n"
        assert not (tmp_path / "pwned").exists()

    def test_raw_names_are_verbatim(self):
        fn = ShellFunction("ls {opts} {dir}", raw=["opts"])
        task = fn.to_task("t", (), {"opts": "-l | wc -l", "dir": "a b"}, SPEC)
        assert task.script == "ls -l | wc -l 'a b'"
        assert fn.raw == frozenset({"opts"})

    def test_template_syntax_is_checked_at_construction(self):
        with pytest.raises(TemplateError, match="positional"):
            ShellFunction("echo {}")
        with pytest.raises(TemplateError, match="attribute"):
            ShellFunction("echo {a.b}")
        with pytest.raises(TemplateError, match="raw names"):
            ShellFunction("echo {a}", raw=["b"])
        with pytest.raises(TemplateError, match="empty"):
            ShellFunction("   ")

    def test_positional_arguments_are_refused(self):
        fn = ShellFunction("echo {msg}")
        with pytest.raises(TemplateError, match=r"by keyword, e.g. submit\(fn, msg=...\)"):
            fn.to_task("t", ("hi",), {}, SPEC)

    def test_missing_and_extra_values(self):
        fn = ShellFunction("echo {msg}")
        with pytest.raises(TemplateError, match="no value"):
            fn.to_task("t", (), {}, SPEC)
        with pytest.raises(TemplateError, match="not used"):
            fn.to_task("t", (), {"msg": 1, "other": 2}, SPEC)

    def test_placeholders(self):
        assert ShellFunction("cp {src} {dst}").placeholders == frozenset({"src", "dst"})


class TestShellFunctionArgv:
    def test_argv_elements_are_literal(self):
        argv = ["./solver", "--in={path}", "a b; $(x)", "{{literal}}", "{}", ";"]
        task = ShellFunction(argv).to_task("t", (), {}, SPEC)
        assert task.argv == tuple(argv)
        assert task.script is None
        assert task.name == "solver"

    def test_argv_takes_no_keyword_values(self):
        fn = ShellFunction(["echo", "{a}"])
        with pytest.raises(TemplateError, match="into the list itself"):
            fn.to_task("t", (), {"a": 1}, SPEC)

    def test_argv_accepts_paths_and_tuples(self):
        fn = ShellFunction((Path("/usr/bin/env"), "true"))
        assert fn.cmd == ("/usr/bin/env", "true")
        assert fn.to_task("t", (), {}, SPEC).argv == ("/usr/bin/env", "true")

    def test_argv_is_copied_not_shared(self):
        argv = ["echo", "a"]
        fn = ShellFunction(argv)
        argv.append("b")
        assert fn.cmd == ("echo", "a")

    @pytest.mark.parametrize(
        ("cmd", "fragment"),
        [
            ([], "empty"),
            (["echo", 3], r"argv\[1\] is int"),
            (42, "not int"),
        ],
    )
    def test_bad_argv(self, cmd, fragment):
        with pytest.raises(TemplateError, match=fragment):
            ShellFunction(cmd)

    def test_raw_with_argv_is_refused(self):
        with pytest.raises(TemplateError, match="template strings only"):
            ShellFunction(["echo", "{a}"], raw=["a"])


class TestShellFunctionOptions:
    @pytest.mark.parametrize(
        ("fn_walltime", "spec_walltime", "expected"),
        [(None, None, None), (10, None, 10.0), (None, 20, 20.0), (10, 20, 10.0), (30, 20, 20.0)],
    )
    def test_effective_walltime_is_the_smaller(self, fn_walltime, spec_walltime, expected):
        fn = ShellFunction("true", walltime=fn_walltime)
        task = fn.to_task("t", (), {}, ResourceSpec(walltime=spec_walltime))
        assert task.spec["walltime"] == expected

    def test_spec_is_folded_into_the_message(self):
        spec = ResourceSpec(num_nodes=2, ranks_per_node=4, retries=2, launcher_options=["-v"])
        task = ShellFunction("hostname").to_task("t", (), {}, spec)
        assert task.spec == spec.to_dict()
        assert task.spec["retries"] == 2

    def test_multi_node_spec_is_fine_for_a_shell_function(self):
        spec = ResourceSpec(num_nodes=3, ranks_per_node=2)
        assert ShellFunction("hostname").to_task("t", (), {}, spec).spec["num_nodes"] == 3

    @pytest.mark.parametrize("value", [0, -1, 1_000_001, True, 10.0, "5"])
    def test_snippet_lines_range(self, value):
        with pytest.raises(SpecError) as info:
            ShellFunction("true", snippet_lines=value)
        assert info.value.field == "snippet_lines"

    @pytest.mark.parametrize("value", [0, -5, float("nan"), "10", True])
    def test_walltime_is_checked(self, value):
        with pytest.raises(SpecError) as info:
            ShellFunction("true", walltime=value)
        assert info.value.field == "walltime"

    def test_spec_must_be_a_resource_spec(self):
        with pytest.raises(SpecError, match="coerce_spec"):
            ShellFunction("true").to_task("t", (), {}, {"num_nodes": 1})  # type: ignore[arg-type]

    def test_name_default_and_override(self):
        assert ShellFunction("/usr/bin/python3 -c pass").name == "python3"
        assert ShellFunction("{prog} x").name == "{prog}"
        assert ShellFunction("true", name="mine").name == "mine"
        with pytest.raises(TypeError):
            ShellFunction("true", name="")

    def test_frozen_equal_hashable(self):
        fn = ShellFunction("echo {a}", walltime=5)
        with pytest.raises(dataclasses.FrozenInstanceError):
            fn.walltime = 10  # type: ignore[misc]
        assert fn == ShellFunction("echo {a}", walltime=5.0)
        assert hash(fn) == hash(ShellFunction("echo {a}", walltime=5.0))
        assert fn != MPIFunction("echo {a}", walltime=5)

    def test_repr(self):
        assert repr(ShellFunction("echo {a}")) == "ShellFunction('echo {a}', name='echo')"
        fn = MPIFunction(["./a.out", "{n}"], walltime=60, snippet_lines=10, name="app")
        assert (
            repr(fn)
            == "MPIFunction(['./a.out', '{n}'], walltime=60.0, snippet_lines=10, name='app')"
        )
        raw = ShellFunction("ls {o}", raw=["o"])
        assert repr(raw) == "ShellFunction('ls {o}', name='ls', raw=['o'])"

    def test_message_survives_the_wire(self):
        task = ShellFunction("echo {a}", walltime=3).to_task("t-1", (), {"a": "x y"}, SPEC)
        assert decode_task(encode_task(task)) == task


class TestMPIFunction:
    def test_kind_and_message(self):
        fn = MPIFunction(["./hello", "7"], walltime=5)
        spec = ResourceSpec(num_nodes=2, ranks_per_node=2)
        task = fn.to_task("m1", (), {}, spec)
        assert isinstance(fn, ShellFunction)
        assert task.kind is TaskKind.MPI
        assert task.argv == ("./hello", "7")
        assert task.spec["num_ranks"] == 4
        assert task.spec["walltime"] == 5.0

    def test_template_kind(self):
        task = MPIFunction("hostname > out.$PMI_RANK").to_task("m", (), {}, SPEC)
        assert task.kind is TaskKind.MPI
        assert task.script == "hostname > out.$PMI_RANK"


def rank_times(comm, factor, offset=0):
    return comm.rank * factor + offset


class TestMPIPythonFunction:
    def test_payload_is_fn_args_kwargs(self):
        fn = MPIPythonFunction(rank_times, return_all=True, walltime=9)
        task = fn.to_task("p1", (10,), {"offset": 1}, ResourceSpec(num_ranks=4, walltime=20))
        assert task.kind is TaskKind.MPI_PYTHON
        assert task.return_all is True
        assert task.spec["walltime"] == 9.0
        assert task.name == "rank_times"
        inner, args, kwargs = dill.loads(task.payload)
        assert inner(FakeComm(), *args, **kwargs) == 31

    def test_closure_and_lambda_travel(self):
        scale = 5
        fn = MPIPythonFunction(lambda comm: comm.size * scale)
        inner, args, kwargs = dill.loads(fn.to_task("p", (), {}, SPEC).payload)
        assert inner(FakeComm(), *args, **kwargs) == 20
        assert fn.name.endswith("<lambda>")

    def test_checks(self):
        with pytest.raises(TypeError, match="callable"):
            MPIPythonFunction(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="return_all"):
            MPIPythonFunction(rank_times, return_all=1)  # type: ignore[arg-type]
        with pytest.raises(SpecError):
            MPIPythonFunction(rank_times, walltime=-1)

    def test_unserialisable_argument(self):
        fn = MPIPythonFunction(rank_times, name="ranker")
        with pytest.raises(SerializationError, match="'ranker'") as info:
            fn.to_task("p", ((i for i in range(3)),), {}, SPEC)
        assert info.value.__cause__ is not None

    def test_repr_and_frozen(self):
        fn = MPIPythonFunction(rank_times, return_all=True, walltime=2)
        assert repr(fn) == "MPIPythonFunction(rank_times, return_all=True, walltime=2.0)"
        with pytest.raises(dataclasses.FrozenInstanceError):
            fn.return_all = False  # type: ignore[misc]

    def test_message_survives_the_wire(self):
        task = MPIPythonFunction(rank_times).to_task("p", (2,), {}, SPEC)
        assert decode_task(encode_task(task)) == task


class TestPythonTask:
    def test_message(self):
        task = python_task(add, (1,), {"b": 2}, "py1", ResourceSpec(walltime=7, retries=1))
        assert task.kind is TaskKind.PYTHON
        assert task.name == "add"
        assert task.spec["walltime"] == 7.0
        assert task.spec["retries"] == 1
        fn, args, kwargs = dill.loads(task.payload)
        assert fn(*args, **kwargs) == 3

    def test_partial_and_callable_instance_names(self):
        assert python_task(functools.partial(add, 1), (), {}, "a", SPEC).name == "add"

        class Job:
            def __call__(self) -> int:
                return 1

        assert python_task(Job(), (), {}, "b", SPEC).name == "Job"

    def test_unserialisable_names_function_and_cause(self):
        with pytest.raises(SerializationError) as info:
            python_task(add, ((x for x in "ab"),), {}, "t", SPEC)
        message = str(info.value)
        assert "'add'" in message
        assert "generator" in message
        assert info.value.__cause__ is not None

    def test_not_callable(self):
        with pytest.raises(TypeError, match="callable"):
            python_task("add", (), {}, "t", SPEC)  # type: ignore[arg-type]
