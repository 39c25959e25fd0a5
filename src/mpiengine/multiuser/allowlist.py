"""The allow-list: which commands, template scripts and Python functions may run.

A YAML file::

    commands:                     # shell and MPI tasks, by the executable's resolved path
      - executable: /usr/bin/id   # with any arguments
      - executable: /bin/echo
        args: "hello( .*)?"       # only when the arguments (shlex-joined) fully match
    scripts:                      # template commands, by sha256 of the rendered script...
      - sha256: 3f5a...
      - pattern: "echo [a-z]+"    # ...or a regex the whole script must match
    functions:                    # Python functions, by content hash (function_hash)
      - sha256: 9b1c...

Anything not listed is refused before it runs. Commands and scripts are checked by the manager
(they travel as data); a Python function is checked by the user endpoint, as the user, after
unpickling its payload (the manager never unpickles anything as root).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpiengine_sdk.errors import AuthorizationError, ConfigError
from mpiengine_sdk.wire import TaskKind, TaskMessage

__all__ = ["AllowList", "function_hash"]

#: The PATH a user endpoint resolves a bare command name on (privileges.user_environment).
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def function_hash(fn: Callable[..., Any]) -> str:
    """The content hash of a Python function: sha256 over its code's bytecode, constants,
    names, arguments and flags (nested code objects included), not its file name or line
    numbers, so the same function body gives the same hash on one Python version, wherever it
    was defined and however it travelled.

    Raises:
        TypeError: ``fn`` has no code object.
    """
    code = getattr(fn, "__code__", None)
    if code is None:
        raise TypeError(f"{fn!r} is not a Python function")
    return hashlib.sha256(repr(_canon(code)).encode()).hexdigest()


def _canon(code: Any) -> tuple[Any, ...]:
    # Not marshal.dumps: its output depends on object identity (shared references).
    consts = tuple(_canon(c) if hasattr(c, "co_code") else c for c in code.co_consts)
    return (
        code.co_code,
        consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_name,
    )


@dataclass(frozen=True)
class _Command:
    executable: str
    args: re.Pattern[str] | None


@dataclass(frozen=True)
class AllowList:
    """A parsed allow-list (see the module docstring)."""

    commands: tuple[_Command, ...] = ()
    script_hashes: frozenset[str] = frozenset()
    script_patterns: tuple[re.Pattern[str], ...] = ()
    functions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def load(cls, path: Path) -> AllowList:
        """Read an allow-list file.

        Raises:
            ConfigError: unreadable, unknown keys, a relative executable, or a bad regex.
        """
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(str(path), f"cannot read the allow-list: {exc}") from exc
        return cls.parse(doc)

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> AllowList:
        """Build from the file's mapping (see ``load``)."""
        if not isinstance(doc, Mapping) or set(doc) - {"commands", "scripts", "functions"}:
            raise ConfigError("allowlist", "must be a mapping", "commands, scripts, functions")
        commands = []
        for i, item in enumerate(doc.get("commands") or []):
            exe = item.get("executable") if isinstance(item, Mapping) else None
            if not isinstance(exe, str) or not os.path.isabs(exe):
                raise ConfigError(f"allowlist.commands[{i}].executable", "must be an absolute path")
            commands.append(_Command(os.path.realpath(exe), _regex(item.get("args"), i)))
        hashes, patterns = set(), []
        for i, item in enumerate(doc.get("scripts") or []):
            if isinstance(item, Mapping) and isinstance(item.get("sha256"), str):
                hashes.add(item["sha256"].lower())
            elif isinstance(item, Mapping) and isinstance(item.get("pattern"), str):
                patterns.append(re.compile(item["pattern"], re.DOTALL))
            else:
                raise ConfigError(f"allowlist.scripts[{i}]", "needs sha256 or pattern")
        functions = set()
        for i, item in enumerate(doc.get("functions") or []):
            if not isinstance(item, Mapping) or not isinstance(item.get("sha256"), str):
                raise ConfigError(f"allowlist.functions[{i}]", "needs sha256 (function_hash)")
            functions.add(item["sha256"].lower())
        return cls(tuple(commands), frozenset(hashes), tuple(patterns), frozenset(functions))

    def check_command(self, task: TaskMessage) -> None:
        """Refuse a shell/MPI task not on the list (Python tasks: see ``check_function``).

        Raises:
            AuthorizationError: the command, or its script, is not allowed.
        """
        if task.kind in (TaskKind.PYTHON, TaskKind.MPI_PYTHON):
            return
        if task.script is not None:
            digest = hashlib.sha256(task.script.encode()).hexdigest()
            if digest in self.script_hashes:
                return
            if any(p.fullmatch(task.script) for p in self.script_patterns):
                return
            raise AuthorizationError(
                f"task {task.task_id}: this template script (sha256 {digest}) is not on the "
                "endpoint's allow-list",
                "not_allowed",
            )
        exe = task.argv[0] if task.argv else ""
        found = exe if os.path.isabs(exe) else shutil.which(exe, path=USER_PATH)
        real = os.path.realpath(found) if found else exe
        args = shlex.join(task.argv[1:])
        for cmd in self.commands:
            if cmd.executable == real and (cmd.args is None or cmd.args.fullmatch(args)):
                return
        raise AuthorizationError(
            f"task {task.task_id}: command {shlex.join(task.argv)!r} ({real}) is not on the "
            "endpoint's allow-list",
            "not_allowed",
        )

    def check_function(self, task_id: str, fn: Callable[..., Any]) -> None:
        """Refuse a Python function whose content hash is not on the list.

        Raises:
            AuthorizationError: not allowed.
        """
        try:
            digest = function_hash(fn)
        except TypeError:
            digest = ""
        if digest not in self.functions:
            name = getattr(fn, "__qualname__", repr(fn))
            raise AuthorizationError(
                f"task {task_id}: function {name} (sha256 {digest or '-'}) is not on the "
                "endpoint's allow-list",
                "not_allowed",
            )

    def as_dict(self) -> dict[str, Any]:
        """The list in its file form (handed to user endpoints)."""
        return {
            "commands": [
                {"executable": c.executable, **({"args": c.args.pattern} if c.args else {})}
                for c in self.commands
            ],
            "scripts": [{"sha256": h} for h in sorted(self.script_hashes)]
            + [{"pattern": p.pattern} for p in self.script_patterns],
            "functions": [{"sha256": h} for h in sorted(self.functions)],
        }


def _regex(value: object, i: int) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return re.compile(str(value), re.DOTALL)
    except re.error as exc:
        raise ConfigError(f"allowlist.commands[{i}].args", f"invalid regex: {exc}") from exc
