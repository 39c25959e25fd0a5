"""A non-editable install works like the checkout: the data folders ship inside the wheel.

Builds the wheel (``pip wheel``), installs it without dependencies into a folder of its own, and
imports mpiengine from there (``PYTHONPATH`` puts it before the editable install) to load every
launcher, the endpoint config schema and run a shell task on the embedded endpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

CHECK = r"""
import json, sys
import mpiengine, mpiengine.data
from mpiengine.config import load_config
from mpiengine.launchers import available_launchers, load_launcher
from mpiengine_sdk import Executor, ShellFunction

names = available_launchers()
for name in names:
    load_launcher(name)
load_config({"provider": "local", "nodes_per_block": 1})
with Executor(nodes=1, cores_per_node=1, workdir=sys.argv[1]) as ex:
    out = ex.submit(ShellFunction(["echo", "from the wheel"])).result(60).stdout
print(json.dumps({
    "module": mpiengine.__file__,
    "launchers": str(mpiengine.data.data_dir("launchers")),
    "site_configs": str(mpiengine.data.data_dir("site-configs")),
    "names": names,
    "stdout": out,
}))
"""


def test_the_wheel_carries_the_data_folders_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("mpiengine-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mpiengine/_data/site-configs/block.schema.json" in names
    shipped = {Path(n).name for n in names if n.startswith("mpiengine/_data/launchers/")}
    assert {f.name for f in (REPO / "launchers").iterdir() if f.is_file()} <= shipped

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "work")],
        env=env,
        cwd=tmp_path,  # not the checkout
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = json.loads(out.splitlines()[-1])
    assert Path(found["module"]).is_relative_to(target)
    assert Path(found["launchers"]) == target / "mpiengine" / "_data" / "launchers"
    assert Path(found["site_configs"]) == target / "mpiengine" / "_data" / "site-configs"
    assert {"local", "srun", "mpich", "pals", "openmpi", "aprun"} <= set(found["names"])
    assert found["stdout"] == "from the wheel\n"
