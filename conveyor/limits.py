"""Every size and range limit of Conveyor, in one place.

The broker announces the ones a client must honour in WELCOME (``limits``); the
protocol spec (docs/protocol.md, section 10) lists them all. Names are checked against
:data:`NAME_PATTERN`. Broker-side values that operators may change are the defaults of
:class:`conveyor.broker.config.Limits`; everything else here is fixed.
"""

from __future__ import annotations

from typing import Final

# -- frames -------------------------------------------------------------------------------------
MAX_FRAME_SIZE: Final = 1024 * 1024  # bytes of one frame body (configurable on the broker)
HANDSHAKE_MAX_FRAME_SIZE: Final = 16 * 1024  # before WELCOME: a HELLO is tiny
MAX_BATCH: Final = 10_000  # jobs per SUBMIT (the broker refuses more)
FRAME_OVERHEAD: Final = 1024  # room for a job's id, task, queue and fields beside its payload

# -- jobs ---------------------------------------------------------------------------------------
MAX_PAYLOAD: Final = 512 * 1024  # bytes of packed [args, kwargs] (configurable on the broker)
MAX_RESULT: Final = MAX_PAYLOAD  # bytes of a packed result
MAX_QUEUED: Final = 1_000_000  # queued + scheduled jobs per queue (configurable; 0 = unlimited)
MAX_DEPTH: Final = 32  # nesting levels of args/kwargs; args and kwargs themselves are level 1
NAME_PATTERN: Final = r"[A-Za-z0-9_.:\-]+"
MAX_TASK_NAME: Final = 200
MAX_QUEUE_NAME: Final = 100
MAX_JOB_ID: Final = 100
MAX_GET_MANY: Final = 1000  # ids per GET_MANY
MAX_UNIQUE_KEY: Final = 200
MAX_CLIENT_NAME: Final = 100  # characters of HELLO ``name`` that are kept
MIN_PRIORITY: Final = 1
MAX_PRIORITY: Final = 10
MAX_RETRIES: Final = 100
MAX_TIMEOUT: Final = 24 * 3600.0  # seconds; also the cap on a task's own timeout
MIN_TIMEOUT: Final = 0.001
MAX_DELAY: Final = 365 * 86400.0
MAX_ETA: Final = 1e11  # epoch seconds (the year 5138)
MAX_RETRY_BACKOFF: Final = 86400.0
MAX_RETRY_BACKOFF_MAX: Final = 7 * 86400.0
MAX_RETRY_DELAY: Final = 365 * 86400.0  # a task's Retry(delay=...)
INT_MIN: Final = -(2**63)  # MessagePack's integer range; bigger ones travel as an extension
INT_MAX: Final = 2**64 - 1

# -- errors a worker reports ------------------------------------------------------------------
MAX_ERROR_TYPE: Final = 200  # characters
MAX_ERROR_MESSAGE: Final = 10_000  # characters (a sealed message must fit too)
MAX_TRACEBACK: Final = 50_000  # characters (the end is kept: where it was raised)

# -- requests -----------------------------------------------------------------------------------
MAX_LIST: Final = 1000  # jobs per LIST page
MAX_WAITS: Final = 10_000  # outstanding WAITs per connection
MAX_DEPENDENCIES: Final = 1000  # jobs one job may wait for (SUBMIT ``after``; a chord's group)
MAX_PROGRESS_MESSAGE: Final = 500  # characters of a job's progress message
MAX_META: Final = 4096  # bytes of a job's metadata, packed (current_job().set_meta)
MAX_PROGRESS_BATCH: Final = 1000  # jobs in one PROGRESS frame
PROGRESS_INTERVAL: Final = 0.2  # seconds: a worker sends each job's progress at most this often
MAX_CONCURRENCY: Final = 10_000  # a worker's concurrency, and its prefetch
MAX_WORKER_TASKS: Final = 10_000  # task names in one READY
MAX_WORKER_QUEUES: Final = 1_000  # queue names in one READY
MAX_PID: Final = 2**32 - 1  # READY ``pid``
MAX_IDS: Final = 10_000  # job ids in one DLQ_RETRY / DLQ_PURGE
MAX_ECHO: Final = 100  # characters of a refused name an error message repeats
MAX_ERROR_REPLY: Final = 2_000  # characters of the message of an ERROR the broker sends
MAX_WAIT_TIMEOUT: Final = 86_400.0  # seconds
MAX_LIST_OFFSET: Final = 2**31 - 1
