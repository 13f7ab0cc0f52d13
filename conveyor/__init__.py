"""Conveyor: a fast, durable, secure distributed task queue.

The public surface is what ``__all__`` lists; everything else is internal.
"""

from importlib import metadata as _metadata

from conveyor.client.aio import AsyncClient, AsyncJob
from conveyor.client.flows import AsyncWorkflow, WorkflowHandle
from conveyor.client.handle import JobHandle
from conveyor.client.sync import Client
from conveyor.errors import (
    AuthenticationError,
    BrokerError,
    ConfigError,
    ConnectionLost,
    ConveyorError,
    InvalidJob,
    JobFailed,
    JobNotFound,
    PayloadDecryptError,
    PermissionDenied,
    ProtocolError,
    QueueFull,
    RateLimited,
    Reject,
    ResultTimeout,
    Retry,
    SubmitFailed,
)
from conveyor.job import Job, JobState
from conveyor.worker.progress import CurrentJob, current_job
from conveyor.worker.tasks import task
from conveyor.workflow import chain, chord, group, sig

try:
    __version__ = _metadata.version("conveyor")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncWorkflow",
    "AuthenticationError",
    "BrokerError",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "ConveyorError",
    "CurrentJob",
    "InvalidJob",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "PayloadDecryptError",
    "PermissionDenied",
    "ProtocolError",
    "QueueFull",
    "RateLimited",
    "Reject",
    "ResultTimeout",
    "Retry",
    "SubmitFailed",
    "WorkflowHandle",
    "__version__",
    "chain",
    "chord",
    "current_job",
    "group",
    "sig",
    "task",
]
