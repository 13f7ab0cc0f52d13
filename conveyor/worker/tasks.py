"""Tasks: the ``@task`` decorator, the registry it fills, and :func:`load_tasks`.

A task is a plain function (sync or ``async def``) registered under a name. Jobs
name the task they want; a worker only runs tasks from modules named on its
command line (:func:`load_tasks` is the one place that imports code), so nothing
in a message can make a worker import or call anything else.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from conveyor import limitspec
from conveyor.client.default import default_client
from conveyor.client.handle import JobHandle
from conveyor.client.sync import Client
from conveyor.errors import ConfigError, InvalidJob
from conveyor.job import (
    DEFAULT_QUEUE,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
)
from conveyor.limits import (
    MAX_PRIORITY,
    MAX_QUEUE_NAME,
    MAX_RETRIES,
    MAX_TASK_NAME,
    MAX_TIMEOUT,
    MIN_PRIORITY,
)
from conveyor.schedules import parse_schedule
from conveyor.validation import check_name
from conveyor.workflow import Signature

P = ParamSpec("P")
R = TypeVar("R")

_MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True, slots=True)
class TaskDef:
    """Everything a worker needs to know about one registered task."""

    name: str
    fn: Callable[..., Any]
    queue: str = DEFAULT_QUEUE
    retries: int = DEFAULT_RETRIES
    timeout: float | None = None
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    non_retryable: tuple[type[BaseException], ...] = ()
    is_async: bool = False
    signature: inspect.Signature | None = None  # arguments are checked against it first
    priority: int | None = None  # for jobs submitted through the task object
    rate: str | None = None  # the broker dispatches it no faster ("10/m": limitspec)
    concurrency_limit: int | None = None  # running jobs per concurrency key, broker-wide
    schedule: dict[str, Any] | None = None  # @task(schedule=...): announced in READY

    def submit_options(self) -> dict[str, Any]:
        """The options a job of this task gets when submitted through the task object."""
        options = {
            "queue": self.queue,
            "priority": self.priority,
            "retries": self.retries,
            "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
            "timeout": self.timeout,
        }
        return {k: v for k, v in options.items() if v is not None}

    def call_error(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        """Why the function cannot take these arguments (None if it can), saying what it takes:
        ``greet(name: str): unexpected keyword argument 'nme' (did you mean 'name'?)``."""
        if self.signature is None:
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return f"{self.name}{self.signature}: {_unexpected(self.signature, kwargs) or exc}"
        return None

    def check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse (InvalidJob) arguments the function cannot take, before they are sent."""
        why = self.call_error(args, kwargs)
        if why is not None:
            raise InvalidJob("invalid", why, "kwargs" if kwargs else "args")

    @property
    def module(self) -> str:
        """The module the task function was defined in."""
        return str(getattr(self.fn, "__module__", "") or "")

    @property
    def qualname(self) -> str:
        """``module.qualname`` of the task function, for messages."""
        return f"{self.module}.{getattr(self.fn, '__qualname__', repr(self.fn))}"


class TaskRegistry:
    """Task definitions by name. Registering a second function under a taken name fails."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}
        self._lock = threading.Lock()

    def register(self, definition: TaskDef) -> TaskDef:
        """Add ``definition``; the same function again (even reloaded) replaces the old entry."""
        with self._lock:
            old = self._tasks.get(definition.name)
            if old is not None and old.qualname != definition.qualname:
                raise ValueError(
                    f"task name {definition.name!r} is already registered by {old.qualname}; "
                    f"{definition.qualname} needs another name (@task(name=...))"
                )
            self._tasks[definition.name] = definition
        return definition

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> TaskDef:
        return self._tasks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[TaskDef]:
        """The task definitions, sorted by name."""
        return iter([self._tasks[name] for name in sorted(self._tasks)])

    def names(self) -> list[str]:
        """Registered task names, sorted (what a worker offers the broker)."""
        return sorted(self._tasks)

    def queues(self) -> list[str]:
        """The queues the registered tasks default to, sorted."""
        return sorted({t.queue for t in self._tasks.values()})

    def __repr__(self) -> str:
        return f"TaskRegistry({self.names()!r})"


default_registry = TaskRegistry()
"""The registry ``@task`` fills unless told otherwise."""


class Task(Generic[P, R]):
    """What ``@task`` returns: the function, still directly callable, plus ``.task``.

    Where the module is importable, the task object is also the producer's API:
    ``resize.submit(path, width)`` (or ``resize.delay(...)``) submits a job with the task's
    own queue, priority, retries and timeout, after checking the arguments against the
    function's signature. Submit options given there win (``queue=``, ``priority=``...);
    ``client=`` picks the client (default: one per thread, from the environment).
    """

    def __init__(self, fn: Callable[P, R], definition: TaskDef) -> None:
        self.fn = fn
        self.task = definition
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def __conveyor_task__(self) -> TaskDef:
        """How the clients recognise a task object given instead of a task name."""
        return self.task

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def submit(self, *args: Any, client: Client | None = None, **kwargs: Any) -> JobHandle:
        """Submit a job of this task (see the class docstring); returns its handle."""
        return (client or default_client()).submit(self, *args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> JobHandle:
        """The same as :meth:`submit` (Celery's name for it)."""
        return self.submit(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task for a workflow (``chain(resize.s(path), ...)``)."""
        return Signature(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<task {self.task.name!r} {self.task.qualname}>"


def _check_options(
    name: str, queue: str, retries: int, timeout: float | None, backoff: float, backoff_max: float
) -> None:
    try:
        check_name(name, "task", MAX_TASK_NAME)
        check_name(queue, "queue", MAX_QUEUE_NAME)
    except InvalidJob as exc:
        raise ValueError(f"@task {name!r}: {exc.message}") from exc
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"@task {name!r}: retries must be an integer from 0 to {MAX_RETRIES}")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"@task {name!r}: timeout must be in (0, {MAX_TIMEOUT:g}] seconds")
    if backoff < 0 or backoff_max < 0:
        raise ValueError(f"@task {name!r}: retry_backoff and retry_backoff_max must be >= 0")


def _check_limits(
    name: str, rate: str | None, concurrency_limit: int | None
) -> tuple[str | None, int | None]:
    try:
        return (
            None if rate is None else str(limitspec.parse_rate(rate)),
            None
            if concurrency_limit is None
            else limitspec.parse_key_limit(concurrency_limit, "concurrency_limit"),
        )
    except InvalidJob as exc:
        raise ValueError(f"@task {name!r}: {exc.message}") from None


def _non_retryable(value: Any, name: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"@task {name!r}: non_retryable must hold exception classes")
    return tuple(items)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
    non_retryable: tuple[type[BaseException], ...] | type[BaseException] = (),
    priority: int | None = None,
    rate: str | None = None,
    concurrency_limit: int | None = None,
    schedule: str | Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
    non_retryable: tuple[type[BaseException], ...] | type[BaseException] = (),
    priority: int | None = None,
    rate: str | None = None,
    concurrency_limit: int | None = None,
    schedule: str | Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Register a function as a task; use bare (``@task``) or with options (``@task(...)``).

    The name defaults to the function's ``__name__``. ``non_retryable`` exceptions fail
    the job at once, as :class:`~conveyor.errors.Reject` does. ``rate`` (``"10/s"``,
    ``"100/m"``) and ``concurrency_limit`` (running jobs per ``concurrency_key``) are
    enforced by the broker across all workers (docs/workflows.md). ``schedule`` runs it
    periodically: a cron expression (``"0 3 * * *"``), ``"every 30s"``, or a map with
    ``cron`` or ``every`` and ``tz``, ``catch_up``, ``args``, ``kwargs``, ``priority``;
    the broker registers it (named after the task) when a worker offering it connects.
    """

    def decorate(func: Callable[P, R]) -> Task[P, R]:
        if not callable(func):
            raise TypeError("@task decorates a function; give options by keyword: @task(name=...)")
        task_name = name if name is not None else getattr(func, "__name__", "")
        _check_options(task_name, queue, retries, timeout, retry_backoff, retry_backoff_max)
        if priority is not None and (
            isinstance(priority, bool) or not MIN_PRIORITY <= priority <= MAX_PRIORITY
        ):
            raise ValueError(f"@task {task_name!r}: priority must be from 1 to 10")
        checked_rate, checked_limit = _check_limits(task_name, rate, concurrency_limit)
        definition = TaskDef(
            name=task_name,
            fn=func,
            queue=queue,
            retries=retries,
            timeout=None if timeout is None else float(timeout),
            retry_backoff=float(retry_backoff),
            retry_backoff_max=float(retry_backoff_max),
            non_retryable=_non_retryable(non_retryable, task_name),
            is_async=inspect.iscoroutinefunction(func),
            signature=_signature(func),
            priority=priority,
            rate=checked_rate,
            concurrency_limit=checked_limit,
            schedule=_schedule(schedule, task_name, queue),
        )
        (default_registry if registry is None else registry).register(definition)
        return Task(func, definition)

    return decorate if fn is None else decorate(fn)


def _schedule(value: Any, name: str, queue: str) -> dict[str, Any] | None:
    """``@task(schedule=...)`` as the spec READY carries, checked now (not at connect)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        spec: dict[str, Any] = (
            {"every": text[6:].strip()} if text.lower().startswith("every ") else {"cron": text}
        )
    elif isinstance(value, Mapping):
        spec = dict(value)
    else:
        raise TypeError(f"@task {name!r}: schedule must be a cron string, 'every 30s' or a map")
    try:
        parse_schedule({"queue": queue, **spec, "name": name, "task": name}, 0.0)
    except InvalidJob as exc:
        raise ValueError(f"@task {name!r}: schedule {exc.message}") from exc
    return spec


def _unexpected(signature: inspect.Signature, kwargs: dict[str, Any]) -> str | None:
    """ "unexpected keyword argument 'nme' (did you mean 'name'?)", the likeliest mistake."""
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    for name in kwargs:
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unexpected keyword argument {name!r}{hint}"
    return None


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: their arguments go unchecked
        return None


def _import(module_name: str) -> Any:
    if not _MODULE_RE.fullmatch(module_name):
        raise ConfigError(f"task module {module_name!r} is not a dotted module name")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module exists but imports something missing: show the real error
        raise ConfigError(
            f"cannot import task module {module_name!r}: {exc} (check the module name and "
            "PYTHONPATH)"
        ) from exc


def load_tasks(modules: Iterable[str], registry: TaskRegistry | None = None) -> TaskRegistry:
    """Import ``modules`` by dotted name; return a new registry of the tasks they define.

    A module's tasks are those registered (into ``registry``, default the global one)
    by functions defined in it or in its submodules, plus any task it exposes as a
    module attribute. A name that cannot be imported raises :class:`ConfigError`;
    errors raised by the module's own code propagate unchanged.
    """
    source = default_registry if registry is None else registry
    loaded = TaskRegistry()
    for module_name in modules:
        module = _import(module_name)
        for definition in source:
            if definition.module == module_name or definition.module.startswith(module_name + "."):
                loaded.register(definition)
        for value in list(vars(module).values()):
            if isinstance(value, Task):
                loaded.register(value.task)
    return loaded
