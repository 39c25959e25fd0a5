"""A task's base environment: what it inherits from the process that launches it.

The engine (on the login node or in the embedded endpoint) and the block agent (on a batch
job's lead node) both start tasks from their own environment, minus every variable that
describes one particular task or placement; each task then gets its own ``MPIENGINE_*``
variables (``mpiengine.taskprep``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["clean_base_env"]

#: Variables a task inherits from nowhere but its own placement. The GPU vendors' variables
#: are among them: inside a batch job they name the whole job's GPUs, never one task's.
_OWN_PREFIXES = (
    "MPIENGINE_",
    "PARSL_",
    "SLURM_STEP_",
    "PMI_",
    "PMIX_RANK",
    "OMPI_COMM_WORLD",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "GPU_DEVICE_ORDINAL",
)


def clean_base_env(env: Mapping[str, str]) -> dict[str, str]:
    """The endpoint's environment minus anything that would describe another task.

    Args:
        env: the launching process's environment (``os.environ`` or the agent's).

    Returns:
        A new dict without the per-task and per-placement variables.
    """
    return {k: v for k, v in env.items() if not k.startswith(_OWN_PREFIXES)}
