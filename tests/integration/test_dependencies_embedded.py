"""Dependent tasks on the real embedded endpoint: values flow, failures and cancels propagate."""

from __future__ import annotations

import pytest

from mpiengine_sdk import DependencyFailed, Executor, ShellFunction


def add(a, b):
    return a + b


def type_and_stdout(result):
    return type(result).__name__, result.stdout


def boom():
    raise ValueError("no input")


def test_values_flow_through_python_and_shell_tasks(tmp_path):
    with Executor(nodes=2, workdir=tmp_path) as ex:
        three = ex.submit(add, 1, 2)
        thirteen = ex.submit(add, three, 10)
        echoed = ex.submit(ShellFunction("echo {value}; echo {text}"), value=thirteen, text="a b")
        kind = ex.submit(type_and_stdout, echoed)  # a shell result as a Python argument
        words = ex.submit(ShellFunction("printf '%s|' {lines}"), lines=[echoed, three])
        assert thirteen.result(timeout=120) == 13
        assert echoed.result(timeout=120).stdout == "13\na b\n"
        assert words.result(timeout=120).stdout == "13\na b|3|"
        assert kind.result(timeout=120) == ("ShellResult", "13\na b\n")


def test_a_failed_or_cancelled_dependency_fails_the_dependent(tmp_path):
    with Executor(nodes=2, workdir=tmp_path) as ex:
        failing = ex.submit(boom)
        after_failure = ex.submit(add, failing, 1)
        with pytest.raises(DependencyFailed) as info:
            after_failure.result(timeout=120)
        assert info.value.dependency == failing.task_id
        assert str(info.value) == (
            f"dependency {failing.task_id} did not succeed (ValueError: no input); "
            "this task was not run"
        )
        slow = ex.submit(ShellFunction("sleep 30"))
        after_cancel = ex.submit(ShellFunction("echo {x}"), x=slow)
        assert slow.cancel()
        with pytest.raises(DependencyFailed, match=r"\(it was cancelled\)"):
            after_cancel.result(timeout=120)
