"""The @task decorator, the registry, load_tasks and the built-in example tasks."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import examples
from conveyor.errors import ConfigError
from conveyor.job import DEFAULT_QUEUE, DEFAULT_RETRIES
from conveyor.protocol.payload import pack_call, unpack
from conveyor.worker.execute import run_sync
from conveyor.worker.tasks import Task, TaskDef, TaskRegistry, default_registry, load_tasks, task

_n = itertools.count()


@pytest.fixture
def reg() -> TaskRegistry:
    return TaskRegistry()


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway task modules; they leave sys.modules after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _module(root: Path, dotted: str, source: str) -> str:
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        pkg = root.joinpath(*parts[:i])
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").touch()
    root.joinpath(*parts[:-1], parts[-1] + ".py").write_text(source)
    return dotted


def _unique(prefix: str) -> str:
    return f"{prefix}{next(_n)}_{id(_n)}"


def test_bare_decorator_defaults(reg: TaskRegistry) -> None:
    def resize(path: str, width: int) -> dict[str, object]:
        """Resize."""
        return {"path": path, "width": width}

    wrapped = task(registry=reg)(resize)
    assert isinstance(wrapped, Task)
    assert wrapped("a.png", 10) == {"path": "a.png", "width": 10}  # still directly callable
    assert wrapped.__name__ == "resize" and wrapped.__doc__ == "Resize."
    assert wrapped.__wrapped__ is resize  # type: ignore[attr-defined]
    definition = wrapped.task
    assert definition == reg["resize"] and wrapped.name == "resize"
    assert definition.fn is resize and not definition.is_async
    assert definition.queue == DEFAULT_QUEUE and definition.retries == DEFAULT_RETRIES
    assert definition.timeout is None and definition.non_retryable == ()


def test_bare_decorator_uses_default_registry() -> None:
    name = _unique("bare_default_")

    def fn() -> int:
        return 1

    fn.__name__ = name
    wrapped = task(fn)
    assert default_registry.get(name) is wrapped.task


def test_decorator_with_options(reg: TaskRegistry) -> None:
    @task(
        name="images.resize",
        queue="images",
        retries=5,
        timeout=60,
        retry_backoff=2,
        retry_backoff_max=120,
        non_retryable=ValueError,
        registry=reg,
    )
    async def resize(path: str) -> str:
        return path

    d = resize.task
    assert d == TaskDef(
        name="images.resize",
        fn=resize.fn,
        queue="images",
        retries=5,
        timeout=60.0,
        retry_backoff=2.0,
        retry_backoff_max=120.0,
        non_retryable=(ValueError,),
        is_async=True,
        signature=inspect.signature(resize.fn),
    )
    assert asyncio.run(resize("x")) == "x"
    assert reg.names() == ["images.resize"] and reg.queues() == ["images"]
    assert "images.resize" in reg and len(reg) == 1 and list(reg) == [d]


def test_duplicate_name_from_another_function_fails(reg: TaskRegistry) -> None:
    @task(name="dup", registry=reg)
    def first() -> None: ...

    with pytest.raises(ValueError, match=r"'dup' is already registered by .*first"):

        @task(name="dup", registry=reg)
        def second() -> None: ...

    assert reg["dup"].fn is first.fn


def test_registering_the_same_function_again_is_fine(reg: TaskRegistry) -> None:
    def same() -> None: ...

    task(registry=reg)(same)
    again = task(registry=reg)(same)
    assert reg["same"] is again.task and len(reg) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "has space"}, "may only contain"),
        ({"name": ""}, "non-empty"),
        ({"name": "x" * 201}, "at most 200"),
        ({"queue": "bad/queue"}, "queue may only contain"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
        ({"retry_backoff": -1}, "retry_backoff"),
    ],
)
def test_bad_options_raise_value_error(
    reg: TaskRegistry, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        task(registry=reg, **{"name": "ok", **options})(lambda: None)  # type: ignore[call-overload]
    assert len(reg) == 0


def test_lambda_needs_a_name(reg: TaskRegistry) -> None:
    with pytest.raises(ValueError, match="may only contain"):
        task(registry=reg)(lambda: None)
    assert task(name="named", registry=reg)(lambda: 1)() == 1


def test_bad_non_retryable_and_positional_name(reg: TaskRegistry) -> None:
    with pytest.raises(TypeError, match="exception classes"):
        task(name="ok", registry=reg, non_retryable=(ValueError, "x"))(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="by keyword"):
        task("resize")  # type: ignore[call-overload]


def test_load_tasks_imports_by_name_and_snapshots(modules: Path) -> None:
    pkg = _unique("loadpkg")
    a = _module(
        modules,
        f"{pkg}.a",
        "from conveyor.worker.tasks import task\n"
        f"@task(name='{pkg}.one')\ndef one(): return 1\n"
        f"@task(name='{pkg}.two', queue='q2')\nasync def two(): return 2\n",
    )
    _module(
        modules,
        f"{pkg}.b",
        f"from conveyor.worker.tasks import task\n@task(name='{pkg}.other')\ndef other(): pass\n",
    )
    loaded = load_tasks([a])
    assert loaded.names() == [f"{pkg}.one", f"{pkg}.two"]
    assert loaded.queues() == [DEFAULT_QUEUE, "q2"]
    assert loaded[f"{pkg}.two"].is_async
    assert loaded[f"{pkg}.one"] is default_registry[f"{pkg}.one"]
    # a package includes its submodules' tasks, and the snapshot is a new registry
    both = load_tasks([f"{pkg}.b", pkg])
    assert both.names() == [f"{pkg}.one", f"{pkg}.other", f"{pkg}.two"]
    assert loaded is not both and len(loaded) == 2


def test_load_tasks_includes_reexported_tasks(modules: Path) -> None:
    mod = _module(modules, _unique("reexport"), "from conveyor.examples import add, noop\n")
    assert load_tasks([mod]).names() == ["add", "noop"]


def test_load_tasks_rejects_bad_and_missing_modules(modules: Path) -> None:
    for bad in ("", ".relative", "a/b", "os; rm", "a..b"):
        with pytest.raises(ConfigError, match="not a dotted module name"):
            load_tasks([bad])
    with pytest.raises(ConfigError, match="cannot import task module"):
        load_tasks(["no_such_module_for_conveyor_tests"])
    with pytest.raises(ConfigError, match="cannot import task module"):
        load_tasks(["conveyor.no_such_submodule"])


def test_load_tasks_lets_the_modules_own_errors_through(modules: Path) -> None:
    missing_dep = _module(modules, _unique("needs_dep"), "import not_installed_dep_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="not_installed_dep_xyz"):
        load_tasks([missing_dep])
    broken = _module(modules, _unique("broken"), "1 / 0\n")
    with pytest.raises(ZeroDivisionError):
        load_tasks([broken])


def test_load_tasks_conflicting_names_fail(modules: Path) -> None:
    name = _unique("clash")
    source = f"from conveyor.worker.tasks import task\n@task(name='{name}')\ndef f(): pass\n"
    first = _module(modules, _unique("clash_a"), source)
    second = _module(modules, _unique("clash_b"), source)
    load_tasks([first])
    with pytest.raises(ValueError, match="already registered"):
        load_tasks([second])


# -- examples -----------------------------------------------------------------------------


def test_examples_are_registered() -> None:
    assert load_tasks(["conveyor.examples"]).names() == sorted(
        [
            "add",
            "async_sleep",
            "fail",
            "fibonacci",
            "flaky",
            "is_prime",
            "noop",
            "reverse_string",
            "slow_task",
            "steps",
            "to_uppercase",
            "total",
        ]
    )
    assert examples.async_sleep.task.is_async


def test_examples_compute() -> None:
    assert examples.reverse_string("abc") == "cba"
    assert examples.to_uppercase("abc") == "ABC"
    assert [examples.fibonacci(n) for n in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]
    assert examples.fibonacci(100) == 354224848179261915075
    assert examples.add(2, 3) == 5 and examples.noop() is None
    assert examples.total([1, 2], 3) == 6.0
    assert examples.slow_task(0) == 0.0
    assert asyncio.run(examples.async_sleep(0.001)) == 0.001
    assert examples.flaky(0) == "ok"
    with pytest.raises(RuntimeError, match="flaky"):
        examples.flaky(1)
    with pytest.raises(RuntimeError, match="failed on purpose"):
        examples.fail()


def test_is_prime_matches_trial_division() -> None:
    def slow(n: int) -> bool:
        return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))

    assert [n for n in range(2000) if examples.is_prime(n)] == [n for n in range(2000) if slow(n)]
    assert examples.is_prime(2**61 - 1) and not examples.is_prime(2**61 + 1)
    assert not examples.is_prime(3215031751)  # a strong pseudoprime to bases 2, 3, 5, 7


@pytest.mark.parametrize(
    ("definition", "args"),
    [
        (examples.fibonacci.task, [10_001]),
        (examples.fibonacci.task, [-1]),
        (examples.fibonacci.task, ["5"]),
        (examples.is_prime.task, [10**30]),
        (examples.slow_task.task, [3601]),
        (examples.slow_task.task, [-1]),
        (examples.flaky.task, [2]),
        (examples.async_sleep.task, [4000]),
    ],
)
def test_examples_reject_bad_input_without_retry(definition: TaskDef, args: list[object]) -> None:
    result = run_sync(definition, pack_call(args, {}))
    assert result.error_type in ("ValueError", "TypeError") and result.reject


def test_example_failures_are_retryable() -> None:
    result = run_sync(examples.fail.task, pack_call([], {"message": "nope"}))
    assert result.error_type == "RuntimeError" and not result.reject
    assert result.error is not None and result.error["message"] == "nope"


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ([], {"nme": "x"}, "unexpected keyword argument 'nme'"),
        ([], {}, "missing a required argument: 'n'"),
        ([1, 2], {}, "too many positional arguments"),
    ],
)
def test_arguments_that_do_not_fit_fail_at_once_without_retry(
    args: list[object], kwargs: dict[str, object], why: str
) -> None:
    result = run_sync(examples.fibonacci.task, pack_call(args, kwargs))
    assert result.error_type == "InvalidArguments" and result.reject
    assert result.error is not None and why in result.error["message"]
    assert "fibonacci(n: 'int')" in result.error["message"]  # says what it takes


def test_a_payload_that_does_not_decode_fails_at_once() -> None:
    result = run_sync(examples.noop.task, b"\x92\xc1")
    assert result.error_type == "InvalidPayload" and result.reject


def test_big_integer_results_travel() -> None:
    result = run_sync(examples.fibonacci.task, pack_call([100], {}))
    assert result.ok and result.result is not None
    assert unpack(result.result) == 354224848179261915075
