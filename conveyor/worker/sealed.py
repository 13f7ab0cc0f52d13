"""The worker's side of end-to-end payload encryption: open the call, seal what goes back.

A job whose arguments are sealed gets its result, error message and traceback sealed
too; a plain job stays plain, even on a worker that has a key. A sealed job that this
worker cannot open fails at once, without retries, with error type
``PayloadDecryptError``: running it again on the same worker would fail the same way.

Payloads arrive packed; a sealed one is recognised by its first bytes (the packed
``[[], {"__conveyor_encrypted__": …}]``), so plain jobs are never unpacked here.
"""

from __future__ import annotations

from typing import Any

from conveyor.errors import PayloadDecryptError
from conveyor.limits import MAX_RESULT
from conveyor.protocol.payload import PayloadError, pack, pack_call, unpack, unpack_call
from conveyor.security.payload import CALL, ENVELOPE_KEY, RESULT, PayloadCipher, context
from conveyor.worker.execute import INVALID_PAYLOAD, TOO_LARGE, RunRequest, RunResult, failure

DECRYPT_ERROR = PayloadDecryptError.__name__
SEALED_PREFIX = b"\x92\x90\x81" + pack(ENVELOPE_KEY)  # [[], {ENVELOPE_KEY: ...


def is_sealed_payload(payload: bytes) -> bool:
    return payload.startswith(SEALED_PREFIX)


def open_request(raw: dict[str, Any], cipher: PayloadCipher | None) -> RunRequest | RunResult:
    """The RunRequest for a dispatched job map, or the failure to report if it won't open."""
    job_id, task = str(raw["id"]), str(raw["task"])
    payload = raw.get("payload")
    if not isinstance(payload, bytes):
        return failure(INVALID_PAYLOAD, "the dispatched job carries no payload", reject=True)
    if is_sealed_payload(payload):
        if cipher is None:
            return failure(
                DECRYPT_ERROR,
                "the job's payload is encrypted and this worker has no payload key "
                "(start it with --payload-key-file or $CONVEYOR_PAYLOAD_KEY_FILE)",
                reject=True,
            )
        try:
            args, kwargs = cipher.open_call(*unpack_call(payload), ctx=context(CALL, job_id, task))
        except (PayloadDecryptError, PayloadError) as exc:
            return failure(
                DECRYPT_ERROR, f"{exc} (is this worker's key file current?)", reject=True
            )
        payload = pack_call(args, kwargs)
    return RunRequest(job_id, task, payload, raw.get("timeout"))


def seal_result(result: RunResult, cipher: PayloadCipher | None, raw: dict[str, Any]) -> RunResult:
    """``result`` as it should be reported: sealed if the job came sealed, else as is."""
    payload = raw.get("payload")
    if cipher is None or not isinstance(payload, bytes) or not is_sealed_payload(payload):
        return result
    job_id, task = str(raw["id"]), str(raw["task"])
    if result.ok:
        value = unpack(result.result) if result.result is not None else None
        sealed = pack(cipher.seal_value(value, ctx=context(RESULT, job_id, task)))
        if len(sealed) <= MAX_RESULT:
            return RunResult(ok=True, result=sealed)
        result = failure(
            TOO_LARGE,
            f"the encrypted result is {len(sealed)} bytes; the limit is {MAX_RESULT} "
            "(encryption adds about a third; store big outputs elsewhere)",
            reject=True,
        )
    if result.error is None or result.error_type == DECRYPT_ERROR:
        return result  # our own message; it holds nothing from the payload
    return RunResult(
        ok=False,
        error=cipher.seal_error(result.error, job_id, task),
        retry_delay=result.retry_delay,
        reject=result.reject,
    )
