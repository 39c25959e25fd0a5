"""What a task needs to run: a frozen resource specification that checks itself.

The shape of a task is ``num_nodes x ranks_per_node = num_ranks``. Give any two and the third is
computed; give one and the others follow the simplest reading (``num_nodes`` alone: one rank per
node; ``num_ranks`` or ``ranks_per_node`` alone: one node); give none for one node x one rank.
A shape that does not divide evenly (2 nodes, 5 ranks) is refused with a :class:`SpecError`
naming the field, never rounded: a launcher handed ``-ppn 2.5`` fails much later and much less
clearly.

Every other field has a default; pass ``None`` (or leave it out) to get it. ``None`` means "not
given", which is what :meth:`ResourceSpec.merged` uses to decide what overrides what.
"""

from __future__ import annotations

import math
import operator
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mpiengine_sdk.errors import SpecError

__all__ = ["ResourceSpec", "coerce_spec"]

_SHAPE = ("num_nodes", "ranks_per_node", "num_ranks")

#: Defaults of the non-shape fields, in field order; also what an unknown-key error lists.
_DEFAULTS: dict[str, Any] = {
    "cpus_per_rank": 1,
    "gpus_per_rank": 0,
    "walltime": None,
    "priority": 0,
    "exclusive": False,
    "launcher_options": (),
    "retries": 0,
    "progress_timeout": None,
}

_FIELDS = (*_SHAPE, *_DEFAULTS)


@dataclass(frozen=True, init=False)
class ResourceSpec:
    """The resources one task needs, checked on construction.

    Attributes:
        num_nodes: nodes the task spans.
        ranks_per_node: MPI ranks (processes) on each node.
        num_ranks: total ranks; always ``num_nodes * ranks_per_node``.
        cpus_per_rank: cores reserved for each rank (>= 1).
        gpus_per_rank: GPUs reserved for each rank (>= 0).
        walltime: seconds the task may run before its process tree is killed; None: no limit
            beyond the block's own walltime.
        priority: higher runs first; FIFO among equals. May be negative.
        exclusive: hold the task's nodes whole, even when it uses fewer cores than they have.
        launcher_options: extra launcher arguments, one list element per argument.
        retries: how many times the task may be re-run when its block is lost or a node
            under it fails (>= 0).
        progress_timeout: seconds the task may go without its stdout or stderr growing before
            it is taken as hung: its process tree is killed as at the walltime, and it ends in
            state HUNG (returncode 125, ``TaskHung``); None: no such check.
    """

    num_nodes: int
    ranks_per_node: int
    num_ranks: int
    cpus_per_rank: int
    gpus_per_rank: int
    walltime: float | None
    priority: int
    exclusive: bool
    launcher_options: tuple[str, ...]
    retries: int
    progress_timeout: float | None
    # Which fields the caller set, so merged() can tell an override from a default. Not compared:
    # two specs with the same values are equal however they were made.
    _given: frozenset[str] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        num_nodes: int | None = None,
        ranks_per_node: int | None = None,
        num_ranks: int | None = None,
        cpus_per_rank: int | None = None,
        gpus_per_rank: int | None = None,
        walltime: float | None = None,
        priority: int | None = None,
        exclusive: bool | None = None,
        launcher_options: Sequence[str] | None = None,
        retries: int | None = None,
        progress_timeout: float | None = None,
    ) -> None:
        """Check every field and fill in the shape.

        Args: see the class attributes; ``None`` means "use the default".

        Raises:
            SpecError: a field has the wrong type or range, or the shape does not divide.
        """
        given = {
            "num_nodes": num_nodes,
            "ranks_per_node": ranks_per_node,
            "num_ranks": num_ranks,
            "cpus_per_rank": cpus_per_rank,
            "gpus_per_rank": gpus_per_rank,
            "walltime": walltime,
            "priority": priority,
            "exclusive": exclusive,
            "launcher_options": launcher_options,
            "retries": retries,
            "progress_timeout": progress_timeout,
        }
        self._fill(given, frozenset(k for k, v in given.items() if v is not None))

    def _fill(self, values: Mapping[str, Any], given: frozenset[str]) -> None:
        def opt(name: str) -> Any:
            value = values.get(name)
            return _DEFAULTS[name] if value is None else value

        shape = _resolve_shape(
            _check_int("num_nodes", values.get("num_nodes"), 1, optional=True),
            _check_int("ranks_per_node", values.get("ranks_per_node"), 1, optional=True),
            _check_int("num_ranks", values.get("num_ranks"), 1, optional=True),
        )
        checked = {
            **dict(zip(_SHAPE, shape, strict=True)),
            "cpus_per_rank": _check_int("cpus_per_rank", opt("cpus_per_rank"), 1),
            "gpus_per_rank": _check_int("gpus_per_rank", opt("gpus_per_rank"), 0),
            "walltime": _check_seconds("walltime", values.get("walltime")),
            "priority": _check_int("priority", opt("priority"), None),
            "exclusive": _check_bool("exclusive", opt("exclusive")),
            "launcher_options": _check_options(opt("launcher_options")),
            "retries": _check_int("retries", opt("retries"), 0),
            "progress_timeout": _check_seconds("progress_timeout", values.get("progress_timeout")),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_given", given)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types (``launcher_options`` as a list)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        out["launcher_options"] = list(self.launcher_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceSpec:
        """Build a spec from a mapping, as ``to_dict()`` (or Globus Compute's MPI spec) spells it.

        Globus Compute's ``resource_specification`` keys (``num_nodes``, ``ranks_per_node``,
        ``num_ranks``, ``launcher_options``) are this class's own names; its free-text
        ``launcher_options`` string is refused with the list to pass instead.

        Raises:
            SpecError: ``data`` is not a mapping, has a key this class does not know (the
                message lists the valid keys and their defaults), or a value is invalid.
        """
        if not isinstance(data, Mapping):
            raise SpecError("spec", data, "a mapping of field names to values")
        unknown = sorted((key for key in data if key not in _FIELDS), key=str)
        if unknown:
            raise SpecError(
                ", ".join(map(str, unknown)),
                data[unknown[0]] if len(unknown) == 1 else {k: data[k] for k in unknown},
                f"unknown key; valid keys (default): {_valid_keys()}",
            )
        spec = cls.__new__(cls)
        # Shape keys set to None mean "infer"; any other key present counts as given, so that
        # merged({"walltime": None}) can lift a walltime.
        given = frozenset(k for k in data if not (k in _SHAPE and data[k] is None))
        spec._fill(data, given)
        return spec

    def merged(self, other: ResourceSpec | Mapping[str, Any] | None) -> ResourceSpec:
        """Defaults from ``self``, overrides from ``other``.

        A field overrides when ``other`` set it: a key present in a mapping, or an argument not
        left as None in a ResourceSpec. The shape (``num_nodes``, ``ranks_per_node``,
        ``num_ranks``) overrides as a unit: if ``other`` gives any of them, ``self``'s shape is
        dropped, because mixing two partial shapes (1 node x 4 ranks with 8 ranks) has no single
        right answer.

        Raises:
            SpecError: ``other`` is not a spec, a mapping or None, or it is invalid.
        """
        if other is None:
            return self
        over = coerce_spec(other)
        assert over is not None
        over_given, self_given = over._given, self._given
        values: dict[str, Any] = {name: getattr(self, name) for name in _DEFAULTS}
        keep_shape = not (over_given & set(_SHAPE))
        if keep_shape:
            values.update({name: getattr(self, name) for name in _SHAPE if name in self_given})
        values.update({name: getattr(over, name) for name in over_given})
        spec = ResourceSpec.__new__(ResourceSpec)
        mine = self_given if keep_shape else self_given - set(_SHAPE)
        spec._fill(values, mine | over_given)
        return spec


def coerce_spec(value: ResourceSpec | Mapping[str, Any] | None) -> ResourceSpec | None:
    """Accept a ResourceSpec, a mapping (``ResourceSpec.from_dict``) or None.

    Raises:
        SpecError: any other type, or an invalid mapping.
    """
    if value is None or isinstance(value, ResourceSpec):
        return value
    if isinstance(value, Mapping):
        return ResourceSpec.from_dict(value)
    raise SpecError("spec", value, "a ResourceSpec, a mapping (dict) of its fields, or None")


def _valid_keys() -> str:
    shape = [f"{name}=None (inferred)" for name in _SHAPE]
    rest = [f"{name}={list(v) if isinstance(v, tuple) else v!r}" for name, v in _DEFAULTS.items()]
    return ", ".join(shape + rest)


def _resolve_shape(
    nodes: int | None, per_node: int | None, ranks: int | None
) -> tuple[int, int, int]:
    """Fill in the missing member(s) of nodes x ranks_per_node = ranks, or refuse."""
    if nodes is None and per_node is None:
        return 1, ranks or 1, ranks or 1
    if nodes is None:
        assert per_node is not None
        if ranks is None:
            return 1, per_node, per_node
        if ranks % per_node:
            raise SpecError("num_ranks", ranks, f"a multiple of ranks_per_node={per_node}")
        return ranks // per_node, per_node, ranks
    if per_node is None:
        if ranks is None:
            return nodes, 1, nodes
        if ranks % nodes:
            raise SpecError("num_ranks", ranks, f"a multiple of num_nodes={nodes}")
        return nodes, ranks // nodes, ranks
    if ranks is not None and ranks != nodes * per_node:
        raise SpecError(
            "num_ranks",
            ranks,
            f"num_nodes x ranks_per_node = {nodes} x {per_node} = {nodes * per_node}",
        )
    return nodes, per_node, nodes * per_node


def _check_int(name: str, value: Any, minimum: int | None, optional: bool = False) -> Any:
    """Return ``value`` as an int of at least ``minimum`` (None passes when ``optional``)."""
    if value is None and optional:
        return None
    floor = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, float) and value.is_integer():
        raise SpecError(name, value, f"{floor}; got a float, write {int(value)}")
    # operator.index accepts ints and int-likes (numpy integers) but not floats or strings;
    # bool is refused by hand because True would silently mean 1.
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None:
        raise SpecError(name, value, f"{floor}, not {type(value).__name__}")
    if minimum is not None and number < minimum:
        raise SpecError(name, value, floor)
    return number


def _check_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(
            name, value, f"seconds as a number > 0, or None; not {type(value).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise SpecError(name, value, "seconds as a finite number > 0, or None for no limit")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(name, value, f"True or False, not {type(value).__name__}")
    return value


def _check_options(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            hint = f"pass a list of arguments, e.g. {shlex.split(value)!r}"
        except ValueError:
            hint = "pass a list of arguments, one element per argument"
        raise SpecError("launcher_options", value, f"{hint}, not one string")
    if not isinstance(value, list | tuple):
        raise SpecError("launcher_options", value, f"a list of str, not {type(value).__name__}")
    bad = [item for item in value if not isinstance(item, str)]
    if bad:
        raise SpecError("launcher_options", value, f"a list of str; {bad[0]!r} is not a str")
    return tuple(value)
