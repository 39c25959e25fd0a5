"""The task types: what a user hands to ``Executor.submit``, and how each becomes a TaskMessage.

- :class:`ShellFunction`: a command run once, on the lead node of its placement.
- :class:`MPIFunction`: a command run under the site's launcher on every rank.
- :class:`MPIPythonFunction`: a Python callable run on every rank with an mpi4py communicator.
- :func:`python_task`: a plain Python callable, run once in its own process.

A command is either an argv list (executed directly, no shell; its elements are used exactly as
given, so braces in them are literal text and it takes no keyword values) or a template string
(``{name}`` placeholders rendered with shell-quoted values by :mod:`mpiengine_sdk.template` and
run as ``bash -c``), e.g. ``MPIFunction("./solver --steps {steps}")`` submitted with
``steps=100``. Commands
travel as data, never pickled, so the relay and an endpoint's allowed-functions list can read
them. Python callables travel as dill bytes of ``(fn, args, kwargs)``.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, ClassVar

import dill

from mpiengine_sdk.errors import ArgumentError, SerializationError, SpecError, TemplateError
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.template import check_template, render
from mpiengine_sdk.wire import TaskKind, TaskMessage

__all__ = ["MPIFunction", "MPIPythonFunction", "ShellFunction", "python_task"]

MAX_SNIPPET_LINES = 1_000_000


@dataclass(frozen=True, init=False, repr=False)
class ShellFunction:
    """A shell command run once, on the lead node of its placement.

    With a multi-node spec the command still runs once; it finds the placement's nodes in its
    environment and may start its own launcher.

    Attributes:
        cmd: the template string, or the argv tuple.
        walltime: seconds before the command is killed (returncode 124); None: the spec's.
        snippet_lines: how many trailing lines of stdout/stderr come back in the result.
        name: a label for listings and logs.
        raw: template placeholders inserted without shell quoting.
        placeholders: every placeholder name the command uses.
        stage_in: files copied into the sandbox before the command starts, as
            ``{path in the sandbox: fsspec URL}``.
        stage_out: files copied out after it ends, as ``{glob in the sandbox: folder URL}``.
    """

    #: How the endpoint runs it.
    kind: ClassVar[TaskKind] = TaskKind.SHELL

    cmd: str | tuple[str, ...]
    walltime: float | None
    snippet_lines: int
    name: str
    raw: frozenset[str]
    placeholders: frozenset[str]
    stage_in: tuple[tuple[str, str], ...]
    stage_out: tuple[tuple[str, str], ...]

    def __init__(
        self,
        cmd: str | Sequence[str | os.PathLike[str]],
        *,
        walltime: float | None = None,
        snippet_lines: int = 1000,
        name: str | None = None,
        raw: Collection[str] = (),
        stage_in: Mapping[str, str] | None = None,
        stage_out: Mapping[str, str] | None = None,
    ) -> None:
        """Check the command now, so a typo fails here and not on a remote node.

        Args:
            cmd: a template string (run as ``bash -c``), or an argv list or tuple of str (or
                paths), executed directly.
            walltime: seconds (> 0) or None.
            snippet_lines: 1 to 1,000,000.
            name: defaults to the command's first word.
            raw: template placeholders to insert verbatim (template strings only).
            stage_in: ``{path: url}``: each fsspec URL (``ftp://host/data.bin``,
                ``file:///scratch/in.txt``, ``s3://...``) is copied to that path, relative to
                the sandbox, before the command starts; the endpoint needs fsspec.
            stage_out: ``{glob: url}``: after the command ends, every sandbox file matching
                the glob is copied into the folder URL. A glob that matches nothing, or a copy
                that fails, fails the task with StagingError naming the file.

        Raises:
            TemplateError: an empty command, a bad placeholder, or ``raw`` naming a placeholder
                the template lacks (or given with an argv command, which is never quoted).
            SpecError: ``walltime`` or ``snippet_lines`` out of range, or a ``stage_in`` /
                ``stage_out`` entry that is not a relative sandbox path and a URL.
        """
        command, names = _check_command(cmd, raw)
        values = {
            "cmd": command,
            "walltime": _check_walltime(walltime),
            "snippet_lines": _check_snippet_lines(snippet_lines),
            "name": _check_name(name, _first_word(command)),
            "raw": frozenset(raw),
            "placeholders": names,
            "stage_in": _check_staging("stage_in", stage_in),
            "stage_out": _check_staging("stage_out", stage_out),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def to_task(
        self, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], spec: ResourceSpec
    ) -> TaskMessage:
        """Render the command with ``kwargs`` into a task for ``spec``.

        The task's walltime is the smaller of this function's and the spec's.

        Raises:
            TemplateError: positional arguments were given, or a placeholder value is missing,
                unused or not a shell word.
            SpecError: ``spec`` is not a ResourceSpec.
        """
        if args:
            raise TemplateError(
                f"{self.name}: positional arguments {args!r} given; a command's values are "
                f"passed by keyword, e.g. submit(fn, {_example(self.placeholders)})"
            )
        if isinstance(self.cmd, str):
            script: str | None = render(self.cmd, kwargs, self.raw)
            argv: tuple[str, ...] = ()
        else:
            if kwargs:
                raise TemplateError(
                    f"{self.name}: an argv command is used as given and takes no keyword values "
                    f"(got {sorted(kwargs)}); put the values into the list itself, or use a "
                    "template string"
                )
            script, argv = None, self.cmd
        return TaskMessage(
            task_id=task_id,
            kind=self.kind,
            spec=_spec_dict(spec, self.walltime),
            argv=argv,
            script=script,
            name=self.name,
            snippet_lines=self.snippet_lines,
            staging=self._staging(),
        )

    def _staging(self) -> dict[str, Any]:
        if not (self.stage_in or self.stage_out):
            return {}
        return {"in": dict(self.stage_in), "out": dict(self.stage_out)}

    def __repr__(self) -> str:
        parts = [repr(self.cmd if isinstance(self.cmd, str) else list(self.cmd))]
        if self.walltime is not None:
            parts.append(f"walltime={self.walltime!r}")
        if self.snippet_lines != 1000:
            parts.append(f"snippet_lines={self.snippet_lines}")
        parts.append(f"name={self.name!r}")
        if self.raw:
            parts.append(f"raw={sorted(self.raw)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, init=False, repr=False)
class MPIFunction(ShellFunction):
    """A command run under the site's launcher (srun, mpiexec, ...) on every rank.

    The launcher, its node list and rank counts come from the task's ResourceSpec; the command
    itself is the program: a template string, e.g. ``MPIFunction("./solver --steps {steps}")``
    submitted with ``steps=100``, or an argv list used exactly as given, e.g.
    ``MPIFunction(["./solver", "--steps", "100"])`` (its braces are literal, not placeholders).
    """

    kind: ClassVar[TaskKind] = TaskKind.MPI


@dataclass(frozen=True, init=False, repr=False)
class MPIPythonFunction:
    """A Python callable run on every MPI rank as ``fn(comm, *args, **kwargs)``.

    ``comm`` is the task's mpi4py communicator (``MPI.COMM_WORLD`` of the launch). The future
    holds rank 0's return value, or with ``return_all`` the list of every rank's, in rank order.

    Attributes:
        fn: the callable; it must be serialisable with dill.
        return_all: return every rank's value instead of rank 0's.
        walltime: seconds before all ranks are killed; None: the spec's.
        name: a label for listings and logs.
    """

    kind: ClassVar[TaskKind] = TaskKind.MPI_PYTHON

    fn: Callable[..., Any]
    return_all: bool
    walltime: float | None
    name: str

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        return_all: bool = False,
        walltime: float | None = None,
        name: str | None = None,
    ) -> None:
        """Wrap ``fn``.

        Raises:
            TypeError: ``fn`` is not callable or ``return_all`` is not a bool.
            SpecError: ``walltime`` is not a number > 0 or None.
        """
        if not callable(fn):
            raise TypeError(f"MPIPythonFunction needs a callable, not {type(fn).__name__}")
        if not isinstance(return_all, bool):
            raise TypeError(f"return_all must be True or False, not {return_all!r}")
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "return_all", return_all)
        object.__setattr__(self, "walltime", _check_walltime(walltime))
        object.__setattr__(self, "name", _check_name(name, _callable_name(fn)))

    def to_task(
        self, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], spec: ResourceSpec
    ) -> TaskMessage:
        """Serialise ``(fn, args, kwargs)`` into a task for ``spec``.

        Raises:
            ArgumentError: the arguments do not fit ``fn(comm, *args, **kwargs)``.
            SerializationError: dill cannot serialise the function or its arguments.
            SpecError: ``spec`` is not a ResourceSpec.
        """
        check_arguments(self.fn, (None, *args), kwargs, self.name, leading="comm")
        return TaskMessage(
            task_id=task_id,
            kind=self.kind,
            spec=_spec_dict(spec, self.walltime),
            payload=_dump(self.fn, args, kwargs, self.name),
            name=self.name,
            return_all=self.return_all,
        )

    def __repr__(self) -> str:
        extra = ", return_all=True" if self.return_all else ""
        if self.walltime is not None:
            extra += f", walltime={self.walltime!r}"
        return f"MPIPythonFunction({self.name}{extra})"


def python_task(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    task_id: str,
    spec: ResourceSpec,
) -> TaskMessage:
    """Make a task that runs ``fn(*args, **kwargs)`` once, in its own process.

    Raises:
        TypeError: ``fn`` is not callable.
        ArgumentError: the arguments do not fit ``fn``'s signature.
        SerializationError: dill cannot serialise the function or its arguments.
        SpecError: ``spec`` is not a ResourceSpec.
    """
    if not callable(fn):
        raise TypeError(f"a Python task needs a callable, not {type(fn).__name__}")
    name = _callable_name(fn)
    check_arguments(fn, args, kwargs, name)
    return TaskMessage(
        task_id=task_id,
        kind=TaskKind.PYTHON,
        spec=_spec_dict(spec, None),
        payload=_dump(fn, args, kwargs, name),
        name=name,
    )


#: Keyword options of ``Executor.submit`` itself; a near miss among a function's keyword
#: arguments is most likely a typo of one of these.
SUBMIT_OPTIONS = ("resource_spec", "task_id")


def check_arguments(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    name: str,
    *,
    leading: str = "",
) -> None:
    """Check that ``fn(*args, **kwargs)`` binds to ``fn``'s signature, here and not remotely.

    Args:
        fn: the callable.
        args: the positional arguments (for an MPI Python function, a placeholder for ``comm``
            first).
        kwargs: the keyword arguments.
        name: the task's name, for the message.
        leading: the name of an argument the endpoint supplies (``comm``), for the message.

    Raises:
        ArgumentError: the arguments do not bind; the message names the function's signature
            and, for an unexpected keyword close to a submit option or a parameter, the
            likely intended name.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature to check against
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        supplied = f" (the endpoint passes {leading} first)" if leading else ""
        hint = ""
        unknown = [k for k in kwargs if k not in signature.parameters]
        for key in unknown:
            options = [*SUBMIT_OPTIONS, *signature.parameters]
            close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
            if close and close[0] in SUBMIT_OPTIONS:
                hint += f"; did you mean {close[0]}=, the submit option, for {key}=?"
            elif close:
                hint += f"; did you mean {close[0]}= for {key}=?"
        raise ArgumentError(
            f"{name}{signature}{supplied} cannot be called with these arguments: {exc}{hint}"
        ) from exc


def _dump(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str
) -> bytes:
    # recurse=True pickles only the globals the function uses, not its whole module: a notebook
    # function then travels without the notebook's unrelated (often unpicklable) state.
    try:
        payload: bytes = dill.dumps((fn, tuple(args), dict(kwargs)), recurse=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialise task {name!r} (the function, its arguments or a global it uses) "
            f"with dill: {type(exc).__name__}: {exc}. Pass open files, locks, sockets or "
            "clients by path or name and open them inside the function"
        ) from exc
    return payload


def _spec_dict(spec: ResourceSpec, walltime: float | None) -> dict[str, Any]:
    """``spec.to_dict()`` with the walltime folded to the smaller of the two limits."""
    if not isinstance(spec, ResourceSpec):
        raise SpecError("spec", spec, "a ResourceSpec (use coerce_spec on a mapping)")
    out = spec.to_dict()
    limits = [w for w in (walltime, spec.walltime) if w is not None]
    out["walltime"] = min(limits) if limits else None
    return out


def _check_command(
    cmd: str | Sequence[str | os.PathLike[str]], raw: Collection[str]
) -> tuple[str | tuple[str, ...], frozenset[str]]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise TemplateError("the command template is empty")
        return cmd, check_template(cmd, raw)
    if not isinstance(cmd, list | tuple):
        raise TemplateError(
            f"a command is a template str or an argv list of str, not {type(cmd).__name__}"
        )
    if not cmd:
        raise TemplateError("the argv list is empty; give at least the program")
    argv = []
    for i, word in enumerate(cmd):
        if not isinstance(word, str | os.PathLike):
            raise TemplateError(
                f"argv[{i}] is {type(word).__name__} {word!r}; argv elements are str, "
                f"convert it with str()"
            )
        argv.append(os.fspath(word))
    if isinstance(raw, str) or raw:
        raise TemplateError(
            "raw applies to template strings only; argv elements are never quoted, "
            "so every value is already inserted verbatim"
        )
    # argv elements are literal: braces in them (python -c code, find's {}) are not templates.
    return tuple(argv), frozenset()


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.+")


def _check_staging(field: str, files: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``{sandbox path or glob: URL}`` as sorted pairs, each checked."""
    if files is None:
        return ()
    allowed = "a mapping of relative sandbox paths (globs for stage_out) to fsspec URLs"
    if not isinstance(files, Mapping):
        raise SpecError(field, files, allowed)
    out = []
    for path, url in files.items():
        parts = PurePosixPath(path).parts if isinstance(path, str) else ()
        if not parts or path.startswith("/") or ".." in parts:
            raise SpecError(
                field, {path: url}, f"{allowed}; {path!r} is not a relative path in the sandbox"
            )
        if not isinstance(url, str) or _URL.fullmatch(url) is None:
            raise SpecError(
                field,
                {path: url},
                f"{allowed}; {url!r} is not a URL such as ftp://host/file or file:///path",
            )
        out.append((path, url))
    return tuple(sorted(out))


def _check_walltime(walltime: float | None) -> float | None:
    # The spec's own check, so a function's walltime and a spec's take the same values.
    return ResourceSpec(walltime=walltime).walltime


def _check_snippet_lines(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("snippet_lines", value, f"an int from 1 to {MAX_SNIPPET_LINES}")
    if not 1 <= value <= MAX_SNIPPET_LINES:
        raise SpecError("snippet_lines", value, f"an int from 1 to {MAX_SNIPPET_LINES}")
    return value


def _check_name(name: object, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, not {name!r}")
    return name


def _first_word(cmd: str | tuple[str, ...]) -> str:
    word = cmd[0] if isinstance(cmd, tuple) else (cmd.split() or [""])[0]
    return os.path.basename(word) or word


def _callable_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:  # functools.partial and callable instances
        inner = getattr(fn, "func", None)
        name = _callable_name(inner) if callable(inner) else type(fn).__name__
    return str(name)


def _example(names: frozenset[str]) -> str:
    return ", ".join(f"{n}=..." for n in sorted(names)) or "no arguments"
