"""ResourceSpec: shape inference, refusals naming the field, dict round trip, merging."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpiengine_sdk.errors import SpecError
from mpiengine_sdk.spec import ResourceSpec, coerce_spec

SHAPE = ("num_nodes", "ranks_per_node", "num_ranks")


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (1, 1, 1)),
        ({"num_nodes": 3}, (3, 1, 3)),
        ({"num_ranks": 6}, (1, 6, 6)),
        ({"ranks_per_node": 4}, (1, 4, 4)),
        ({"num_nodes": 2, "ranks_per_node": 4}, (2, 4, 8)),
        ({"num_nodes": 2, "num_ranks": 8}, (2, 4, 8)),
        ({"ranks_per_node": 4, "num_ranks": 8}, (2, 4, 8)),
        ({"num_nodes": 2, "ranks_per_node": 4, "num_ranks": 8}, (2, 4, 8)),
    ],
)
def test_shape_is_filled_in(kwargs, shape):
    spec = ResourceSpec(**kwargs)
    assert (spec.num_nodes, spec.ranks_per_node, spec.num_ranks) == shape
    assert all(type(getattr(spec, f)) is int for f in SHAPE)


def test_defaults():
    spec = ResourceSpec()
    assert spec.cpus_per_rank == 1
    assert spec.gpus_per_rank == 0
    assert spec.walltime is None
    assert spec.priority == 0
    assert spec.exclusive is False
    assert spec.launcher_options == ()
    assert spec.retries == 0


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"num_nodes": 2, "num_ranks": 5}, "multiple of num_nodes=2"),
        ({"ranks_per_node": 4, "num_ranks": 6}, "multiple of ranks_per_node=4"),
        ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5}, "2 x 2 = 4"),
    ],
)
def test_uneven_shape_is_refused_never_rounded(kwargs, allowed):
    with pytest.raises(SpecError) as info:
        ResourceSpec(**kwargs)
    assert info.value.field == "num_ranks"
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_nodes", 0, ">= 1"),
        ("num_nodes", -2, ">= 1"),
        ("num_nodes", 2.0, "got a float, write 2"),
        ("num_nodes", 2.5, "not float"),
        ("num_nodes", True, "not bool"),
        ("num_nodes", "2", "not str"),
        ("ranks_per_node", False, "not bool"),
        ("num_ranks", 0, ">= 1"),
        ("cpus_per_rank", 0, ">= 1"),
        ("cpus_per_rank", 1.0, "write 1"),
        ("gpus_per_rank", -1, ">= 0"),
        ("retries", -1, ">= 0"),
        ("retries", True, "not bool"),
        ("priority", 1.5, "an int"),
        ("priority", True, "not bool"),
        ("walltime", 0, "> 0"),
        ("walltime", -3.0, "> 0"),
        ("walltime", float("inf"), "finite"),
        ("walltime", float("nan"), "finite"),
        ("walltime", True, "not bool"),
        ("walltime", "60", "not str"),
        ("exclusive", 1, "True or False"),
        ("exclusive", "yes", "True or False"),
        ("launcher_options", "--cpu-bind quiet", "['--cpu-bind', 'quiet']"),
        ("launcher_options", "'unbalanced", "pass a list of arguments"),
        ("launcher_options", ["-n", 2], "2 is not a str"),
        ("launcher_options", {"-n": "2"}, "a list of str"),
    ],
)
def test_bad_field_names_itself(field, value, fragment):
    with pytest.raises(SpecError) as info:
        ResourceSpec(**{field: value})
    assert info.value.field == field
    assert info.value.value is value or info.value.value == value
    assert fragment in str(info.value)


def test_accepted_conversions():
    spec = ResourceSpec(walltime=30, launcher_options=["--cpu-bind", "quiet"], priority=-5)
    assert spec.walltime == 30.0 and type(spec.walltime) is float
    assert spec.launcher_options == ("--cpu-bind", "quiet")
    assert spec.priority == -5


def test_int_like_objects_are_accepted():
    class Index:
        def __index__(self):
            return 4

    assert ResourceSpec(num_ranks=Index()).num_ranks == 4  # type: ignore[arg-type]


def test_frozen_hashable_and_picklable():
    spec = ResourceSpec(num_nodes=2, launcher_options=["-x"])
    with pytest.raises(AttributeError):
        spec.num_nodes = 3  # type: ignore[misc]
    assert hash(spec) == hash(ResourceSpec(num_ranks=2, ranks_per_node=1, launcher_options=["-x"]))
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_to_dict_is_plain_json_with_every_field():
    spec = ResourceSpec(num_nodes=2, ranks_per_node=2, walltime=5, launcher_options=["-v"])
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == set(SHAPE) | {
        "cpus_per_rank",
        "gpus_per_rank",
        "walltime",
        "priority",
        "exclusive",
        "launcher_options",
        "retries",
        "progress_timeout",
    }
    assert data["launcher_options"] == ["-v"]


def test_from_dict_refuses_unknown_keys_listing_valid_ones_with_defaults():
    with pytest.raises(SpecError) as info:
        ResourceSpec.from_dict({"nodes": 2, "num_ranks": 2})
    err = info.value
    assert err.field == "nodes"
    assert err.value == 2
    for text in (
        "num_nodes=None (inferred)",
        "cpus_per_rank=1",
        "launcher_options=[]",
        "retries=0",
    ):
        assert text in err.allowed


def test_from_dict_names_all_unknown_keys():
    with pytest.raises(SpecError) as info:
        ResourceSpec.from_dict({"b": 1, "a": 2, 3: 4})  # type: ignore[dict-item]
    assert info.value.field == "3, a, b"


def test_from_dict_refuses_non_mapping():
    with pytest.raises(SpecError, match="mapping"):
        ResourceSpec.from_dict([("num_nodes", 2)])  # type: ignore[arg-type]


def test_globus_compute_resource_specification():
    # The keys of Globus Compute's MPIFunction resource_specification are ours.
    spec = ResourceSpec.from_dict(
        {"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4, "launcher_options": ["--x"]}
    )
    assert (spec.num_nodes, spec.ranks_per_node, spec.num_ranks) == (2, 2, 4)
    with pytest.raises(SpecError, match=r"\['--cpu-bind', 'quiet'\]"):
        ResourceSpec.from_dict({"num_nodes": 2, "launcher_options": "--cpu-bind quiet"})


def test_from_dict_none_means_inferred_or_default():
    spec = ResourceSpec.from_dict({"num_nodes": 2, "num_ranks": None, "cpus_per_rank": None})
    assert spec == ResourceSpec(num_nodes=2)


def test_coerce_spec():
    spec = ResourceSpec(num_nodes=2)
    assert coerce_spec(None) is None
    assert coerce_spec(spec) is spec
    assert coerce_spec({"num_nodes": 2}) == spec
    with pytest.raises(SpecError) as info:
        coerce_spec(3)  # type: ignore[arg-type]
    assert info.value.field == "spec"


class TestMerged:
    def test_none_keeps_self(self):
        spec = ResourceSpec(num_nodes=2)
        assert spec.merged(None) is spec

    def test_other_overrides_only_what_it_sets(self):
        base = ResourceSpec(walltime=60, cpus_per_rank=2, priority=1)
        merged = base.merged(ResourceSpec(priority=5))
        assert (merged.walltime, merged.cpus_per_rank, merged.priority) == (60.0, 2, 5)

    def test_other_can_set_a_field_back_to_its_default(self):
        merged = ResourceSpec(cpus_per_rank=4).merged(ResourceSpec(cpus_per_rank=1))
        assert merged.cpus_per_rank == 1

    def test_mapping_keys_override_including_none_walltime(self):
        base = ResourceSpec(walltime=60, retries=2)
        assert base.merged({"walltime": None}).walltime is None
        assert base.merged({"walltime": None}).retries == 2
        assert base.merged({"retries": 0}).retries == 0

    def test_shape_overrides_as_a_unit(self):
        base = ResourceSpec(num_nodes=1, ranks_per_node=4, gpus_per_rank=1)
        merged = base.merged({"num_ranks": 8})
        assert (merged.num_nodes, merged.ranks_per_node, merged.num_ranks) == (1, 8, 8)
        assert merged.gpus_per_rank == 1

    def test_shape_kept_when_other_gives_none(self):
        base = ResourceSpec(num_nodes=2, ranks_per_node=4)
        merged = base.merged(ResourceSpec(walltime=10))
        assert (merged.num_nodes, merged.num_ranks) == (2, 8)
        # and the merged spec remembers what was given, for a second merge
        assert merged.merged({"priority": 1}).num_ranks == 8

    def test_bad_override_is_a_spec_error(self):
        with pytest.raises(SpecError) as info:
            ResourceSpec().merged({"num_nodes": 2, "num_ranks": 3})
        assert info.value.field == "num_ranks"
        with pytest.raises(SpecError):
            ResourceSpec().merged(42)  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=10_000)


@given(nodes=sizes, per_node=sizes)
def test_any_two_consistent_members_give_the_same_spec(nodes, per_node):
    ranks = nodes * per_node
    specs = {
        ResourceSpec(num_nodes=nodes, ranks_per_node=per_node),
        ResourceSpec(num_nodes=nodes, num_ranks=ranks),
        ResourceSpec(ranks_per_node=per_node, num_ranks=ranks),
        ResourceSpec(num_nodes=nodes, ranks_per_node=per_node, num_ranks=ranks),
    }
    assert len(specs) == 1
    (spec,) = specs
    assert (spec.num_nodes, spec.ranks_per_node, spec.num_ranks) == (nodes, per_node, ranks)


@given(
    divisor=st.integers(min_value=2, max_value=1000),
    ranks=sizes,
    key=st.sampled_from(["num_nodes", "ranks_per_node"]),
)
def test_uneven_splits_always_raise_naming_a_shape_field(divisor, ranks, key):
    if ranks % divisor == 0:
        ranks += 1  # divisor >= 2, so ranks + 1 is not a multiple
    with pytest.raises(SpecError) as info:
        ResourceSpec(**{key: divisor, "num_ranks": ranks})
    assert info.value.field in SHAPE


@given(nodes=st.integers(1, 100), per_node=st.integers(1, 100), ranks=st.integers(1, 10_000))
def test_three_given_must_agree(nodes, per_node, ranks):
    if ranks == nodes * per_node:
        assert ResourceSpec(num_nodes=nodes, ranks_per_node=per_node, num_ranks=ranks)
    else:
        with pytest.raises(SpecError) as info:
            ResourceSpec(num_nodes=nodes, ranks_per_node=per_node, num_ranks=ranks)
        assert info.value.field in SHAPE


specs = st.builds(
    ResourceSpec,
    num_nodes=st.none() | sizes,
    ranks_per_node=st.none() | st.integers(1, 128),
    cpus_per_rank=st.none() | st.integers(1, 256),
    gpus_per_rank=st.none() | st.integers(0, 8),
    walltime=st.none() | st.floats(min_value=1e-3, max_value=1e7) | st.integers(1, 10**6),
    priority=st.none() | st.integers(-(10**6), 10**6),
    exclusive=st.none() | st.booleans(),
    launcher_options=st.none() | st.lists(st.text(max_size=10), max_size=4),
    retries=st.none() | st.integers(0, 10),
)


@given(spec=specs)
def test_to_dict_from_dict_round_trip(spec):
    data = spec.to_dict()
    assert ResourceSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert ResourceSpec.from_dict(data).to_dict() == data


@given(base=specs, other=specs)
def test_merged_with_a_full_dict_is_that_spec(base, other):
    assert base.merged(other.to_dict()) == other
    assert base.merged({}) == base
