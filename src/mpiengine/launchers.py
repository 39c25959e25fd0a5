"""Launchers as data: turn a Placement into the argv prefix, env and hostfile of one launcher.

Each launcher family (srun, MPICH hydra, PALS, Open MPI, aprun, ...) is one YAML file in the
shipped ``launchers/`` folder, validated against ``launcher.schema.json`` and then compiled once:
``{placeholder}`` templates and ``when:`` conditions are parsed and checked at load, so an unknown
placeholder or a bad condition is a load-time ``ConfigError`` naming the file and the field, and
rendering a task is a walk over precompiled items (a few microseconds). ``launchers/README.md``
describes the file format.

Every placeholder value is an int or a node name (checked: letters, digits, ``.``, ``-``, ``_``);
counts go through ``operator.index``, so a float such as ``2.0`` is refused, never printed.
Guarded placeholders exist only for some placements; a template may use one only inside a group
whose ``when`` asserts its guard, which the loader checks, so rendering never meets a missing
value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from mpiengine.data import data_dir
from mpiengine.placement import Placement
from mpiengine_sdk.errors import ConfigError, SpecError

__all__ = ["Launch", "LauncherSpec", "available_launchers", "load_launcher"]

# Placeholder facts by kind. Guarded ones map to the boolean fact that must hold.
INT_FACTS = frozenset(
    "num_nodes num_ranks ranks_per_node cpus_per_rank gpus_per_rank gpus_per_node cores_per_node"
    " cores_per_rank_on_node".split()
)
STR_FACTS: Mapping[str, str | None] = {
    "nodes_csv": None,  # a,b,c
    "hosts_slots": None,  # a:4,b:4
    "lead_node": None,
    "hostfile": None,  # the hostfile path; needs a hostfile: section
    "cpu_bind_list": "cores_uniform",  # 0,1:2,3 (PALS list:, aprun -cc)
    "cpu_bind_plus": "cores_uniform",  # 0+1,2+3 (hydra -bind-to user:)
    "cpu_list_csv": "cores_uniform",  # 0,1,2,3 (all the task's cores on a node)
    "gpu_ids_csv": "gpus_uniform",  # 0,1 (the task's GPUs on a node)
    "nids_csv": "nids_known",  # nid00012 -> 12 (ALPS node numbers)
}
BOOL_FACTS = frozenset({"exclusive", "cores_uniform", "gpus_uniform", "nids_known"})

_NODES_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:,[A-Za-z0-9][A-Za-z0-9._-]*)*", re.ASCII)
_NID_RE = re.compile(r"nid0*(\d+)", re.ASCII)
_COND_RE = re.compile(r"\s*(not\s+)?([a-z_]+)\s*(?:(==|!=|<=|>=|<|>)\s*(-?\d+))?\s*", re.ASCII)
_OPS: Mapping[str, Callable[[int, int], bool]] = dict(
    zip(
        ("==", "!=", "<", "<=", ">", ">="),
        (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge),
        strict=True,
    )
)
_HOSTFILE_LINES: Mapping[str, str] = {
    "host": "{}\n",
    "host:slots": "{}:{}\n",
    "host slots=N": "{} slots={}\n",
}
#: The first line of an IBM JSM explicit resource file (jsrun --erf_input): CPU numbers are the
#: operating system's, as the placement's core lists are.
_ERF_PREAMBLE = "cpu_index_using: physical\n"
_TOP_DEFAULTS = {
    "env": "{}",
    "hostfile": "none",
    "user_options_position": "end",
    "nested_launch_args": "[]",
}


@dataclass(frozen=True)
class Launch:
    """One rendered launch.

    Attributes:
        argv: the launcher prefix; the caller appends the task's own argv.
        env: variables to add to the launcher's environment.
        hostfile: the text to write at ``hostfile_path`` before running ``argv``, or None when
            this launch reads no hostfile.
    """

    argv: tuple[str, ...]
    env: dict[str, str]
    hostfile: str | None


def _count(name: str, value: object, minimum: int) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = minimum - 1  # floats and strings are refused like out-of-range numbers
    if number < minimum:
        raise SpecError(name, value, f"a whole number >= {minimum}")
    return number


class _Facts:
    """The placeholder and condition values of one placement; costly ones computed on use."""

    def __init__(self, p: Placement, cores_per_node: int, hostfile_path: str | None) -> None:
        self.p = p
        self.ranks_per_node = _count("ranks_per_node", p.ranks_per_node, 1)
        self.cpus_per_rank = _count("cpus_per_rank", p.cpus_per_rank, 1)
        self.gpus_per_rank = _count("gpus_per_rank", p.gpus_per_rank, 0)
        self.cores_per_node = _count("cores_per_node", cores_per_node, 1)
        if self.ranks_per_node * self.cpus_per_rank > self.cores_per_node:
            raise SpecError(
                "cpus_per_rank",
                p.cpus_per_rank,
                f"ranks_per_node x cpus_per_rank <= cores_per_node ({self.cores_per_node})",
            )
        self.nodes_csv = ",".join(p.nodes)
        if not _NODES_RE.fullmatch(self.nodes_csv) or len(set(p.nodes)) != len(p.nodes):
            raise SpecError("nodes", p.nodes, "one or more distinct host names of [A-Za-z0-9._-]")
        self.num_nodes = len(p.nodes)
        self.num_ranks = self.num_nodes * self.ranks_per_node
        self.gpus_per_node = self.ranks_per_node * self.gpus_per_rank
        self.lead_node = p.nodes[0]
        self.exclusive = bool(p.exclusive)
        # Exclusive tasks own whole nodes: each rank gets an equal share of every core.
        share = self.cores_per_node // self.ranks_per_node
        self.cores_per_rank_on_node = share if self.exclusive else self.cpus_per_rank
        self.hostfile_used = False
        self._hostfile_path = hostfile_path

    def __getitem__(self, name: str) -> object:  # lets str.format_map read facts
        return getattr(self, name)

    @property
    def hostfile(self) -> str:
        path = self._hostfile_path
        if path is None or not Path(path).is_absolute():
            raise ConfigError("hostfile_path", f"got {path!r}", "an absolute path for the file")
        self.hostfile_used = True
        return path

    @cached_property
    def hosts_slots(self) -> str:
        return ",".join(f"{node}:{self.ranks_per_node}" for node in self.p.nodes)

    @cached_property
    def cores_uniform(self) -> bool:
        cores = self.p.cores
        return (
            len(cores) == self.num_nodes
            and len(cores[0]) >= self.ranks_per_node * self.cpus_per_rank
            and all(node_cores == cores[0] for node_cores in cores)
        )

    def _cores(self, inner: str, outer: str) -> str:
        """The lead node's cores, cpus_per_rank per local rank, joined by ``inner``/``outer``."""
        ids = [str(_count("cores", c, 0)) for c in self.p.cores[0]]
        step = self.cpus_per_rank
        ranks = (inner.join(ids[r * step : (r + 1) * step]) for r in range(self.ranks_per_node))
        return outer.join(ranks)

    cpu_bind_list = property(lambda self: self._cores(",", ":"))
    cpu_bind_plus = property(lambda self: self._cores("+", ","))
    cpu_list_csv = property(lambda self: self._cores(",", ","))

    @cached_property
    def gpus_uniform(self) -> bool:
        gpus = self.p.gpus
        return (
            self.gpus_per_rank > 0
            and len(gpus) == self.num_nodes
            and len(gpus[0]) >= self.gpus_per_node
            and all(node_gpus == gpus[0] for node_gpus in gpus)
        )

    @cached_property
    def gpu_ids_csv(self) -> str:
        return ",".join(str(_count("gpus", g, 0)) for g in self.p.gpus[0][: self.gpus_per_node])

    @cached_property
    def nids_known(self) -> bool:
        return all(_NID_RE.fullmatch(node) for node in self.p.nodes)

    @cached_property
    def nids_csv(self) -> str:
        return ",".join(str(int(node[3:])) for node in self.p.nodes)  # nid0012 -> 12


@dataclass(frozen=True, slots=True)
class _Cond:
    name: str
    op: Callable[[int, int], bool] | None  # None: a boolean fact
    value: int
    negate: bool

    def holds(self, facts: _Facts) -> bool:
        fact = getattr(facts, self.name)
        if self.op is None:
            return bool(fact) is not self.negate
        return self.op(fact, self.value)


@dataclass(frozen=True, slots=True)
class _Text:
    source: str  # a str.format template of plain field names only
    literal: str | None  # the text itself when it has no field

    def render(self, facts: _Facts) -> str:
        return self.literal if self.literal is not None else self.source.format_map(facts)


@dataclass(frozen=True, slots=True)
class _Group:
    when: tuple[_Cond, ...]
    items: tuple[_Text | _Group, ...]


def _emit(items: tuple[_Text | _Group, ...], facts: _Facts, out: list[str]) -> None:
    for item in items:
        if isinstance(item, _Text):
            out.append(item.render(facts))
        elif all(cond.holds(facts) for cond in item.when):
            _emit(item.items, facts, out)


@dataclass(frozen=True)
class LauncherSpec:
    """A loaded, validated and compiled launcher file. Build with ``load_launcher``.

    Attributes:
        name: the launcher's name (its file name without ``.yaml``).
        description: what it is for, and its caveats.
        path: the file it was loaded from.
        executable: the launcher command, or None for no launcher (``local``).
        mpi_tasks: whether it can start several ranks.
        user_options_position: ``"start"`` (after the executable) or ``"end"``.
        hostfile_format: the hostfile line format, or None when it never writes one.
        cpu_binding: who pins ranks to the placement's cores on shared nodes: ``"launcher"``
            (its args, when the core list is the same on every node), ``"wrapper"`` (the
            per-rank wrapper, see ``mpiengine.binding``) or ``"none"``.
        gpu_binding: who gives each rank its GPUs: ``"launcher"`` or ``"wrapper"``.
        rank_env: the variables holding a rank's global and node-local rank, ``(rank,
            local_rank)`` (local_rank may be None), or None for a one-process launcher.
        nested_launch_args: extra args for a shell task's one-rank launch, so that launches it
            starts itself may use its nodes (srun: ``--overlap``).
        site_options: launcher options a site adds to every launch (a named machine's
            recommended options, e.g. ``--gpu-bind=closest``), placed like user options and
            before them, so that a task's own options win where the launcher keeps the last.
    """

    name: str
    description: str
    path: Path
    executable: str | None
    mpi_tasks: bool
    user_options_position: str
    hostfile_format: str | None
    cpu_binding: str
    gpu_binding: str
    rank_env: tuple[str, str | None] | None
    nested_launch_args: tuple[str, ...]
    _args: tuple[_Text | _Group, ...] = field(repr=False)
    _env: tuple[tuple[str, _Text, tuple[_Cond, ...]], ...] = field(repr=False)
    site_options: tuple[str, ...] = ()

    def render(
        self,
        placement: Placement,
        *,
        cores_per_node: int,
        user_options: Sequence[str] = (),
        hostfile_path: str | None = None,
    ) -> Launch:
        """Render the launch of ``placement``.

        Args:
            placement: the task's nodes, ranks per node, cores and GPUs.
            cores_per_node: cores of each node (exclusive tasks ask for all of them).
            user_options: extra launcher options, each one argv element, placed as
                ``user_options_position`` says; never split or joined.
            hostfile_path: absolute path where the caller writes ``Launch.hostfile``; needed
                only when this launch reads a hostfile (``hostfile_format`` is not None).

        Returns:
            The argv prefix, environment and hostfile text.

        Raises:
            SpecError: a count is not a whole number in range, a node name is not a host name,
                or a multi-rank placement meets a launcher without ``mpi_tasks``.
            ConfigError: bad ``user_options``, or a hostfile is needed and no absolute
                ``hostfile_path`` was given.
        """
        facts = _Facts(placement, cores_per_node, hostfile_path)
        if not self.mpi_tasks and facts.num_ranks != 1:
            allowed = f"1 (launcher {self.name} starts one process; use an MPI launcher)"
            raise SpecError("num_ranks", facts.num_ranks, allowed)
        options = self._check_options(user_options)
        if self.site_options:
            options[:0] = self.site_options
        args: list[str] = []
        _emit(self._args, facts, args)
        if self.user_options_position == "start":
            args[:0] = options
        else:
            args.extend(options)
        argv = tuple(args) if self.executable is None else (self.executable, *args)
        env = {
            name: text.render(facts)
            for name, text, when in self._env
            if all(cond.holds(facts) for cond in when)
        }
        hostfile = self._hostfile_text(facts) if facts.hostfile_used else None
        return Launch(argv, env, hostfile)

    def _check_options(self, options: Sequence[str]) -> list[str]:
        if isinstance(options, str) or not all(isinstance(o, str) for o in options):
            raise ConfigError(
                "launcher_options", f"got {options!r}", "a list of strings, one per argument"
            )
        if options and self.executable is None:
            raise ConfigError(
                "launcher_options", f"launcher {self.name} has no command to take {options!r}"
            )
        return list(options)

    def _hostfile_text(self, facts: _Facts) -> str:
        if self.hostfile_format == "erf":
            return _erf_text(facts)
        line = _HOSTFILE_LINES[self.hostfile_format or "host"]
        return "".join(line.format(node, facts.ranks_per_node) for node in facts.p.nodes)


def _erf_ids(
    per_node: tuple[tuple[int, ...], ...], i: int, what: str, need: int, whole: int, facts: _Facts
) -> list[int]:
    """Node ``i``'s ids of ``what`` (cores or gpus): its list, or ``range(whole)`` when an
    exclusive placement lists none (it owns the whole node)."""
    if len(per_node) > i and len(per_node[i]) >= need:
        return [_count(what, x, 0) for x in per_node[i]]
    if facts.exclusive:
        return list(range(whole))
    raise SpecError(what, per_node, f"{need} ids on every node (jsrun binds each rank to its own)")


def _erf_text(facts: _Facts) -> str:
    """An explicit resource file: one line per rank naming its host, cores and GPUs, node by
    node (rank = node index x ranks_per_node + local rank, as the other launchers count)."""
    rpn, gpr = facts.ranks_per_node, facts.gpus_per_rank
    cpr = facts.cores_per_rank_on_node
    lines = [_ERF_PREAMBLE]
    for i, node in enumerate(facts.p.nodes):
        cores = _erf_ids(facts.p.cores, i, "cores", rpn * cpr, facts.cores_per_node, facts)
        gpus: list[int] = []
        if gpr:
            gpus = _erf_ids(facts.p.gpus, i, "gpus", rpn * gpr, rpn * gpr, facts)
        for r in range(rpn):
            mine = ",".join(map(str, cores[r * cpr : (r + 1) * cpr]))
            spec = f"hosts: {node}; cpu: {{{mine}}}"
            if gpr:
                spec += f"; gpu: {{{','.join(map(str, gpus[r * gpr : (r + 1) * gpr]))}}}"
            lines.append(f"rank: {i * rpn + r}: {{ {spec} }}\n")
    return "".join(lines)


@dataclass
class _Compiler:
    """Checks and compiles the templates and conditions of one launcher file."""

    path: Path
    has_hostfile: bool

    def error(self, where: str, problem: str, allowed: str = "") -> ConfigError:
        return ConfigError(f"{self.path}:{where}", problem, allowed)

    def conds(self, when: str | list[str], where: str) -> tuple[_Cond, ...]:
        result = []
        for text in [when] if isinstance(when, str) else when:
            match = _COND_RE.fullmatch(text)
            name = match.group(2) if match else ""
            if not match or name not in INT_FACTS | BOOL_FACTS:
                allowed = f"'NAME', 'not NAME' for {sorted(BOOL_FACTS)}; "
                allowed += f"'NAME OP INTEGER' for {sorted(INT_FACTS)}"
                raise self.error(where, f"cannot read condition {text!r}", allowed)
            negate, op, value = bool(match.group(1)), match.group(3), match.group(4)
            if (name in BOOL_FACTS) == bool(op) or (negate and op):
                raise self.error(
                    where,
                    f"condition {text!r} does not fit fact {name!r}",
                    "'NAME'/'not NAME' for booleans, 'NAME OP INTEGER' for numbers",
                )
            result.append(_Cond(name, _OPS[op] if op else None, int(value or 0), negate))
        return tuple(result)

    def text(self, source: str, where: str, guards: frozenset[str], single_arg: bool) -> _Text:
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise self.error(where, f"bad template {source!r}: {exc}", "'{{' for a brace") from exc
        for _, name, spec, conversion in parsed:
            if name is not None:
                self._check_field(name, spec, conversion, where, guards)
        literal = "".join(text for text, _, _, _ in parsed)
        if single_arg and any(c.isspace() for c in literal):
            raise self.error(where, f"{source!r} is not one argument", "one argv element each")
        has_field = any(name is not None for _, name, _, _ in parsed)
        return _Text(source, None if has_field else literal)

    def _check_field(
        self,
        name: str,
        spec: str | None,
        conversion: str | None,
        where: str,
        guards: frozenset[str],
    ) -> None:
        if name not in INT_FACTS and name not in STR_FACTS:
            raise self.error(
                where,
                f"unknown placeholder {{{name}}}",
                ", ".join(sorted(INT_FACTS | STR_FACTS.keys())),
            )
        if spec or conversion:
            raise self.error(where, f"{{{name}}} has a format spec or conversion", f"{{{name}}}")
        guard = STR_FACTS.get(name)
        if guard is not None and guard not in guards:
            raise self.error(
                where,
                f"{{{name}}} exists only when {guard} holds",
                f"put it in a group with 'when: {guard}'",
            )
        if name == "hostfile" and not self.has_hostfile:
            raise self.error(where, "{hostfile} needs a 'hostfile:' section", "hostfile: {format}")

    def args(
        self, items: list[Any], where: str, guards: frozenset[str]
    ) -> tuple[_Text | _Group, ...]:
        out: list[_Text | _Group] = []
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            if isinstance(item, str):
                out.append(self.text(item, here, guards, single_arg=True))
                continue
            when = self.conds(item["when"], f"{here}.when")
            inner = guards | {c.name for c in when if c.op is None and not c.negate}
            out.append(_Group(when, self.args(item["args"], f"{here}.args", inner)))
        return tuple(out)

    def env(self, env: Mapping[str, Any]) -> tuple[tuple[str, _Text, tuple[_Cond, ...]], ...]:
        out = []
        for name, entry in env.items():
            value, when = (entry, []) if isinstance(entry, str) else (entry["value"], entry["when"])
            conds = self.conds(when, f"env.{name}.when") if when else ()
            guards = frozenset(c.name for c in conds if c.op is None and not c.negate)
            out.append((name, self.text(value, f"env.{name}", guards, single_arg=False), conds))
        return tuple(out)


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads((data_dir("launchers") / "launcher.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_error(path: Path, doc: Any) -> ConfigError | None:
    error = best_match(_validator().iter_errors(doc))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    key = f"{path}:{where.lstrip('.') or '(top)'}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unknown = sorted(set(error.instance) - set(known))
        keys = [
            f"{k} (default {_TOP_DEFAULTS[k]})" if k in _TOP_DEFAULTS and not where else k
            for k in known
        ]
        return ConfigError(key, f"unknown key(s) {unknown}", ", ".join(keys))
    return ConfigError(key, error.message, error.schema.get("description", ""))


@functools.lru_cache(maxsize=64)
def _load_file(path: Path) -> LauncherSpec:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read launcher file: {exc}") from exc
    problem = _schema_error(path, doc)
    if problem is not None:
        raise problem
    if doc["name"] != path.stem:
        raise ConfigError(
            f"{path}:name", f"{doc['name']!r} differs from the file name", repr(path.stem)
        )
    compiler = _Compiler(path, has_hostfile="hostfile" in doc)
    return LauncherSpec(
        name=doc["name"],
        description=doc["description"],
        path=path,
        executable=doc["executable"],
        mpi_tasks=doc["mpi_tasks"],
        user_options_position=doc.get("user_options_position", "end"),
        hostfile_format=doc["hostfile"]["format"] if "hostfile" in doc else None,
        cpu_binding=doc["cpu_binding"],
        gpu_binding=doc["gpu_binding"],
        rank_env=(
            None
            if doc["rank_env"] is None
            else (doc["rank_env"]["rank"], doc["rank_env"].get("local_rank"))
        ),
        nested_launch_args=tuple(doc.get("nested_launch_args", ())),
        _args=compiler.args(doc["args"], "args", frozenset()),
        _env=compiler.env(doc.get("env", {})),
    )


def available_launchers() -> list[str]:
    """Return the names of the shipped launchers, sorted."""
    return sorted(p.stem for p in data_dir("launchers").glob("*.yaml"))


def load_launcher(
    name_or_path: str | Path,
    *,
    executable: str | None = None,
    options: Sequence[str] = (),
) -> LauncherSpec:
    """Load a launcher by shipped name (``"srun"``) or by path to a ``.yaml`` file.

    Files are parsed, validated and compiled once per process (cached by resolved path).

    Args:
        name_or_path: a name from ``available_launchers()``, or a path to a launcher file.
        executable: the launcher command to use instead of the file's (a site's full path).
        options: launcher options added to every launch (a site's recommended options), each
            one argv element.

    Returns:
        The compiled launcher.

    Raises:
        ConfigError: unknown name, unreadable file, a schema violation, an unknown placeholder,
            a bad condition, or an executable given for a launcher without one.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
    else:
        path = data_dir("launchers") / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(
                "launcher", f"unknown launcher {text!r}", ", ".join(available_launchers())
            )
    spec = _load_file(path.resolve())
    if options:
        spec = dataclasses.replace(spec, site_options=tuple(spec._check_options(options)))
    if executable is None:
        return spec
    if not executable or spec.executable is None:
        raise ConfigError(
            "executable",
            f"{executable!r} for launcher {spec.name}",
            "a non-empty command, for launchers that have one",
        )
    return dataclasses.replace(spec, executable=executable)
