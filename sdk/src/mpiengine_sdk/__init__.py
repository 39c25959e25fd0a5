"""mpiengine SDK: submit shell commands, MPI programs and Python functions to an endpoint.

``Executor()`` with no arguments runs an embedded endpoint in this process (needs the
``mpiengine`` package); ``Executor(endpoint_id=..., relay=...)`` submits through a relay, and its
``attach(task_ids)`` gives futures for tasks submitted earlier.
"""

from mpiengine_sdk.errors import (
    ArgumentError,
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BlockLost,
    ConfigError,
    DependencyFailed,
    ExecutorShutdown,
    InvalidTaskId,
    MPIEngineError,
    NodeFailed,
    PayloadTooLarge,
    RateLimited,
    RelayError,
    RemoteExecutionError,
    SerializationError,
    SpecError,
    StagingError,
    SubmitError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskHung,
    TaskTimeout,
    TaskTooLarge,
    TemplateError,
)
from mpiengine_sdk.executor import Executor
from mpiengine_sdk.functions import MPIFunction, MPIPythonFunction, ShellFunction
from mpiengine_sdk.future import TaskFuture
from mpiengine_sdk.progressbar import progress
from mpiengine_sdk.results import MPIResult, ShellResult
from mpiengine_sdk.spec import ResourceSpec
from mpiengine_sdk.states import TaskState

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BlockLost",
    "ConfigError",
    "DependencyFailed",
    "Executor",
    "ExecutorShutdown",
    "InvalidTaskId",
    "MPIEngineError",
    "MPIFunction",
    "MPIPythonFunction",
    "MPIResult",
    "NodeFailed",
    "PayloadTooLarge",
    "RateLimited",
    "RelayError",
    "RemoteExecutionError",
    "ResourceSpec",
    "SerializationError",
    "ShellFunction",
    "ShellResult",
    "SpecError",
    "StagingError",
    "SubmitError",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskFuture",
    "TaskHung",
    "TaskState",
    "TaskTimeout",
    "TaskTooLarge",
    "TemplateError",
    "progress",
]
