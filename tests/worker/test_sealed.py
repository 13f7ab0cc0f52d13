"""The worker's side of payload encryption, without sockets."""

from __future__ import annotations

from typing import Any

from conveyor.limits import MAX_RESULT
from conveyor.protocol.payload import pack_call, unpack
from conveyor.security.payload import (
    CALL,
    MESSAGE,
    RESULT,
    PayloadCipher,
    context,
    generate_key,
    is_sealed,
)
from conveyor.worker.execute import TOO_LARGE, RunRequest, failure, success
from conveyor.worker.sealed import DECRYPT_ERROR, open_request, seal_result

KEY = generate_key()
CIPHER = PayloadCipher.from_keys(KEY)


def dispatched(cipher: PayloadCipher | None = CIPHER, **kwargs: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": "j1", "task": "t", "lease": 1, "timeout": 5.0}
    if cipher is None:
        raw["payload"] = pack_call([], kwargs)
    else:
        raw["payload"] = pack_call(*cipher.seal_call([], kwargs, ctx=context(CALL, "j1", "t")))
    return raw


def test_open_request_plain_and_sealed() -> None:
    plain = RunRequest("j1", "t", pack_call([], {"a": 1}), 5.0)
    assert open_request(dispatched(None, a=1), CIPHER) == plain
    assert open_request(dispatched(None, a=1), None) == plain
    assert open_request(dispatched(a=1), CIPHER) == plain


def test_open_request_without_or_with_a_wrong_key_rejects() -> None:
    for cipher in (None, PayloadCipher.from_keys(generate_key())):
        result = open_request(dispatched(a=1), cipher)
        assert not isinstance(result, RunRequest)
        assert result.error_type == DECRYPT_ERROR and result.reject
        assert not is_sealed(result.error["message"])  # type: ignore[index]
        assert seal_result(result, cipher, dispatched(a=1)) == result


def test_open_request_refuses_a_payload_moved_to_another_job() -> None:
    raw = {**dispatched(a=1), "id": "j2"}
    result = open_request(raw, CIPHER)
    assert not isinstance(result, RunRequest) and result.error_type == DECRYPT_ERROR


def test_seal_result_only_for_sealed_jobs() -> None:
    ok = success("terces")
    assert seal_result(ok, CIPHER, dispatched(None, a=1)) == ok
    assert seal_result(ok, None, dispatched(a=1)) == ok
    sealed = seal_result(ok, CIPHER, dispatched(a=1))
    assert sealed.ok and sealed.result is not None and is_sealed(unpack(sealed.result))
    assert CIPHER.open_value(unpack(sealed.result), ctx=context(RESULT, "j1", "t")) == "terces"


def test_seal_result_seals_errors_but_keeps_type_and_policy() -> None:
    failed = failure("ValueError", "bad secret", "Traceback: secret", retry_delay=3.0)
    sealed = seal_result(failed, CIPHER, dispatched(a=1))
    assert sealed.error is not None
    assert sealed.error["type"] == "ValueError" and sealed.retry_delay == 3.0
    assert "secret" not in repr(sealed)
    message = CIPHER.open_text(sealed.error["message"], ctx=context(MESSAGE, "j1", "t"))
    assert message == "bad secret"


def test_a_result_too_big_once_sealed_fails() -> None:
    big = success("x" * (MAX_RESULT - 100))
    assert big.ok
    sealed = seal_result(big, CIPHER, dispatched(a=1))
    assert not sealed.ok and sealed.reject and sealed.error_type == TOO_LARGE
