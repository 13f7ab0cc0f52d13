"""The worker's side of end-to-end payload encryption: open the call, seal what goes back.

A job whose arguments are sealed gets its result, error message and traceback sealed
too; a plain job stays plain, even on a worker that has a key. A sealed job that this
worker cannot open fails at once, without retries, with error type
``PayloadDecryptError``: running it again on the same worker would fail the same way.
"""

from __future__ import annotations

from typing import Any

from conveyor.errors import PayloadDecryptError
from conveyor.security.payload import (
    CALL,
    RESULT,
    PayloadCipher,
    context,
    is_sealed_call,
)
from conveyor.worker.execute import MAX_RESULT_BYTES, TOO_LARGE, RunRequest, RunResult, failure

DECRYPT_ERROR = PayloadDecryptError.__name__


def open_request(raw: dict[str, Any], cipher: PayloadCipher | None) -> RunRequest | RunResult:
    """The RunRequest for a dispatched job map, or the failure to report if it won't open."""
    job_id, task = str(raw["id"]), str(raw["task"])
    args, kwargs = raw.get("args") or [], raw.get("kwargs") or {}
    if is_sealed_call(args, kwargs):
        if cipher is None:
            return failure(
                DECRYPT_ERROR,
                "the job's payload is encrypted and this worker has no payload key "
                "(start it with --payload-key-file or $CONVEYOR_PAYLOAD_KEY_FILE)",
                reject=True,
            )
        try:
            args, kwargs = cipher.open_call(args, kwargs, ctx=context(CALL, job_id, task))
        except PayloadDecryptError as exc:
            return failure(
                DECRYPT_ERROR, f"{exc} (is this worker's key file current?)", reject=True
            )
    return RunRequest(job_id, task, args, kwargs, raw.get("timeout"))


def seal_result(result: RunResult, cipher: PayloadCipher | None, raw: dict[str, Any]) -> RunResult:
    """``result`` as it should be reported: sealed if the job came sealed, else as is."""
    if cipher is None or not is_sealed_call(raw.get("args"), raw.get("kwargs")):
        return result
    job_id, task = str(raw["id"]), str(raw["task"])
    if result.ok:
        sealed = cipher.seal_value(result.result, ctx=context(RESULT, job_id, task))
        size = len(next(iter(sealed.values())))
        if size <= MAX_RESULT_BYTES:
            return RunResult(ok=True, result=sealed)
        result = failure(
            TOO_LARGE,
            f"the encrypted result is {size} bytes; the limit is {MAX_RESULT_BYTES} "
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
