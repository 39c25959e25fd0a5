"""The endpoint config: defaults, and refusals that name the key, the problem and the allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpiengine.config import BlockConfig, load_config, parse_walltime, schema
from mpiengine_sdk.errors import ConfigError

GOOD = """
provider: slurm
nodes_per_block: 4
cores_per_node: 4
init_blocks: 0
min_blocks: 0
max_blocks: 2
walltime: "00:10:00"
partition: debug
account: proj123
scheduler_options: "#SBATCH --exclusive"
worker_init: "module load mpich"
max_idle_time: 30
"""


def test_a_full_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "endpoint.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.nodes_per_block == 4 and cfg.max_blocks == 2 and cfg.partition == "debug"
    assert cfg.walltime_seconds == 600
    assert cfg.launcher_name == "srun"
    assert cfg.max_idle_time == 30


def test_defaults_match_the_schema() -> None:
    props = schema()["properties"]
    defaults = BlockConfig()
    assert set(props) == set(defaults.as_dict())
    for key, prop in props.items():
        assert getattr(defaults, key) == prop["default"], key


def test_an_unknown_key_lists_every_valid_key_with_its_default() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"cores_per_node": 4, "nodes_per_blok": 2})
    err = info.value
    assert "nodes_per_blok" in err.problem
    assert "nodes_per_block (default 1)" in err.allowed
    assert 'walltime (default "00:30:00")' in err.allowed
    assert "max_idle_time (default 120)" in err.allowed


@pytest.mark.parametrize(
    ("doc", "key", "problem", "allowed"),
    [
        ({"nodes_per_block": "two"}, "nodes_per_block", "is not of type 'integer'", "nodes"),
        ({"nodes_per_block": 0}, "nodes_per_block", "less than the minimum", "nodes"),
        ({"provider": "sge"}, "provider", "is not one of", "slurm"),
        ({"walltime": "10min"}, "walltime", "does not match", "HH:MM:SS"),
        ({"max_idle_time": -1}, "max_idle_time", "less than the minimum", "seconds"),
        ({"cores_per_node": 4, "min_blocks": 3}, "min_blocks", "above max_blocks", "<="),
        ({"cores_per_node": 4, "walltime": "00:00:30"}, "walltime", "under one minute", "00:01"),
        ({}, "cores_per_node", "required for provider 'slurm'", "integer"),
        ({"provider": "local", "nodes_per_block": 2}, "nodes_per_block", "this one host", "1"),
    ],
)
def test_bad_values_are_refused_with_key_problem_and_allowed(doc, key, problem, allowed) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    err = info.value
    assert err.key == key
    assert problem in err.problem
    assert allowed in err.allowed


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_unreadable_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("nodes_per_block: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == str(path)


def test_an_empty_file_means_all_defaults_for_the_local_provider(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("provider: local\n")
    cfg = load_config(path)
    assert cfg.cores >= 1 and cfg.launcher_name == "mpich"


def test_replace_validates_again() -> None:
    cfg = load_config({"cores_per_node": 4})
    assert cfg.replace(max_blocks=3).max_blocks == 3
    with pytest.raises(ConfigError):
        cfg.replace(max_blocks=0)


def test_parse_walltime() -> None:
    assert parse_walltime("01:02:03") == 3723
    with pytest.raises(ConfigError):
        parse_walltime("1:2")


def test_the_old_name_endpointconfig_still_imports_with_a_deprecation_warning() -> None:
    import mpiengine.config as config_module

    with pytest.warns(DeprecationWarning, match="EndpointConfig is now BlockConfig"):
        old = config_module.EndpointConfig
    assert old is BlockConfig
    with pytest.raises(AttributeError):
        _ = config_module.NoSuchName  # type: ignore[attr-defined]
