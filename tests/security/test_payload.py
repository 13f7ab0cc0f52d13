"""End-to-end payload encryption, without sockets: the cipher, key files, keygen."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import click
import msgpack
import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet

from conveyor.cli.keys import keygen_command
from conveyor.client._base import batch_item, final_result, job_spec, read_job
from conveyor.errors import ConfigError, JobFailed, PayloadDecryptError
from conveyor.job import EventKind, Job, JobState, event
from conveyor.limits import MAX_PAYLOAD
from conveyor.protocol.payload import unpack_call
from conveyor.security.payload import (
    CALL,
    ENVELOPE_KEY,
    MAX_SEALED_MESSAGE,
    MAX_SEALED_TRACEBACK,
    MESSAGE,
    RESULT,
    TEXT_PREFIX,
    PayloadCipher,
    context,
    generate_key,
    is_sealed,
    is_sealed_call,
    load_payload_keys,
    resolve_cipher,
)
from conveyor.validation import parse_job

OLD, NEW = generate_key(), generate_key()


@pytest.fixture
def cipher() -> PayloadCipher:
    return PayloadCipher.from_keys(OLD)


# -- sealing and opening ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([], {}),
        ([1, "two", 3.5, None, True], {}),
        ([], {"data": "secret", "nested": {"a": [1, 2, {"b": "c"}]}}),
        (["é ☃ 🚀"], {"n": 2**63}),
    ],
)
def test_call_round_trip(cipher: PayloadCipher, args: list[Any], kwargs: dict[str, Any]) -> None:
    sealed_args, sealed_kwargs = cipher.seal_call(args, kwargs, ctx="c")
    assert sealed_args == []
    assert list(sealed_kwargs) == [ENVELOPE_KEY]
    assert is_sealed_call(sealed_args, sealed_kwargs)
    assert cipher.open_call(sealed_args, sealed_kwargs, ctx="c") == (args, kwargs)


@pytest.mark.parametrize("value", [None, 0, "terces", [1, [2]], {"k": "v"}, 2**70])
def test_value_round_trip(cipher: PayloadCipher, value: object) -> None:
    sealed = cipher.seal_value(value, ctx="r")
    assert is_sealed(sealed)
    assert cipher.open_value(sealed, ctx="r") == value


def test_plain_payloads_pass_through(cipher: PayloadCipher) -> None:
    assert cipher.open_call([1], {"a": 2}) == ([1], {"a": 2})
    assert cipher.open_value({"a": 1}) == {"a": 1}
    assert cipher.open_text("plain") == "plain"
    assert not is_sealed({"a": 1})
    assert not is_sealed({ENVELOPE_KEY: "x", "other": 1})
    assert not is_sealed_call([1], cipher.seal_value(1))


def test_the_broker_accepts_a_sealed_call(cipher: PayloadCipher) -> None:
    spec = job_spec("reverse_string", (), {"data": "secret"}, cipher=cipher)
    parsed = parse_job(spec, now=0.0)
    args, kwargs = unpack_call(parsed.payload)
    assert args == [] and is_sealed(kwargs)
    assert b"secret" not in parsed.payload and "secret" not in repr(spec)


def test_tokens_are_not_plaintext_and_differ_each_time(cipher: PayloadCipher) -> None:
    a = cipher.seal_value("terces")
    b = cipher.seal_value("terces")
    assert a != b
    assert "terces" not in repr(a)


# -- keys and rotation -----------------------------------------------------------------


def test_rotation_old_data_opens_with_new_and_old_keys() -> None:
    sealed = PayloadCipher.from_keys(OLD).seal_value("before", ctx="r")
    rotated = PayloadCipher.from_keys([NEW, OLD])
    assert rotated.open_value(sealed, ctx="r") == "before"
    fresh = rotated.seal_value("after", ctx="r")
    assert PayloadCipher.from_keys(NEW).open_value(fresh, ctx="r") == "after"  # new key encrypts
    with pytest.raises(PayloadDecryptError):
        PayloadCipher.from_keys(OLD).open_value(fresh, ctx="r")
    with pytest.raises(PayloadDecryptError):  # the old key dropped: old data no longer opens
        PayloadCipher.from_keys(NEW).open_value(sealed, ctx="r")


def test_decrypt_only_key_added_last_still_opens() -> None:
    """Rotation step 1: [old, new] opens what [new, ...] seals, yet still seals with old."""
    staged = PayloadCipher.from_keys([OLD, NEW])
    assert staged.open_value(PayloadCipher.from_keys(NEW).seal_value(1)) == 1
    assert PayloadCipher.from_keys(OLD).open_value(staged.seal_value(2)) == 2


def test_wrong_key(cipher: PayloadCipher) -> None:
    sealed = cipher.seal_value("x")
    with pytest.raises(PayloadDecryptError, match="no configured key fits"):
        PayloadCipher.from_keys(NEW).open_value(sealed)


@pytest.mark.parametrize("where", [0, 10, 60, -5])
def test_tampered_token(cipher: PayloadCipher, where: int) -> None:
    token = cipher.seal_value("x")[ENVELOPE_KEY]
    flipped = "A" if token[where] != "A" else "B"
    bad = token[:where] + flipped + token[where + 1 :] if where >= 0 else token[:where]
    with pytest.raises(PayloadDecryptError):
        cipher.open_value({ENVELOPE_KEY: bad})


@pytest.mark.parametrize("junk", ["", "not base64 at all!", "é", "gAAAAA"])
def test_junk_token(cipher: PayloadCipher, junk: str) -> None:
    with pytest.raises(PayloadDecryptError):
        cipher.open_value({ENVELOPE_KEY: junk})


def test_payload_is_bound_to_its_job_task_and_purpose(cipher: PayloadCipher) -> None:
    args, kwargs = cipher.seal_call([], {"a": 1}, ctx=context(CALL, "job-1", "t"))
    for other in (context(CALL, "job-2", "t"), context(CALL, "job-1", "u")):
        with pytest.raises(PayloadDecryptError, match="sealed for"):
            cipher.open_call(args, kwargs, ctx=other)
    result = cipher.seal_value([[], {"a": 1}], ctx=context(RESULT, "job-1", "t"))
    with pytest.raises(PayloadDecryptError):  # a result moved into the arguments slot
        cipher.open_call([], result, ctx=context(CALL, "job-1", "t"))


def test_a_well_keyed_but_malformed_call_is_refused(cipher: PayloadCipher) -> None:
    token = Fernet(OLD).encrypt(msgpack.packb(["c", "not a call"])).decode()
    with pytest.raises(PayloadDecryptError, match="not \\[args, kwargs\\]"):
        cipher.open_call([], {ENVELOPE_KEY: token}, ctx="c")
    token = Fernet(OLD).encrypt(b"\xc1").decode()
    with pytest.raises(PayloadDecryptError, match="malformed"):
        cipher.open_value({ENVELOPE_KEY: token})


@pytest.mark.parametrize("bad", ["short", "x" * 44, b"\x00" * 44, 12])
def test_bad_keys_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="conveyor keygen"):
        PayloadCipher.from_keys([bad])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        PayloadCipher.from_keys([])


def test_repr_hides_the_keys() -> None:
    text = repr(PayloadCipher.from_keys([OLD, NEW]))
    assert OLD not in text and NEW not in text and "keys=2" in text


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# primary\n\n  {NEW}  \n# old one\n{OLD}\n")
    cipher = load_payload_keys(path)
    assert cipher.key_count == 2
    assert PayloadCipher.from_keys(NEW).open_value(cipher.seal_value(1)) == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "holds no key"), ("# only a comment\n\n", "holds no key"), ("nope\n", "key #1")],
)
def test_bad_key_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_payload_keys(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_payload_keys(tmp_path / "missing")


def test_resolve_cipher(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(OLD + "\n")
    assert resolve_cipher(env={}) is None
    assert resolve_cipher(env={"CONVEYOR_PAYLOAD_KEY_FILE": str(path)}) is not None
    assert resolve_cipher(OLD, env={}) is not None
    assert resolve_cipher([NEW, OLD], env={}).key_count == 2  # type: ignore[union-attr]
    c = PayloadCipher.from_keys(OLD)
    assert resolve_cipher(c) is c


# -- error texts -----------------------------------------------------------------------


def test_error_texts_fit_the_brokers_caps(cipher: PayloadCipher) -> None:
    message, tb = "m" * 20_000 + "END", "START" + "☃" * 30_000 + "raised here"
    sealed = cipher.seal_error(
        {"type": "ValueError", "message": message, "traceback": tb}, "j", "t"
    )
    assert sealed["type"] == "ValueError"
    assert len(sealed["message"]) <= MAX_SEALED_MESSAGE
    assert len(sealed["traceback"]) <= MAX_SEALED_TRACEBACK
    assert sealed["message"].startswith(TEXT_PREFIX)
    opened_message = cipher.open_text(sealed["message"], ctx=context(MESSAGE, "j", "t"))
    assert opened_message.startswith("mmm") and opened_message.endswith("...")
    opened_tb = cipher.open_text(sealed["traceback"], ctx="traceback:j:t")
    assert opened_tb.startswith("...\n") and opened_tb.endswith("raised here")


# -- jobs as the client sees them ------------------------------------------------------


def _sealed_job(cipher: PayloadCipher, state: JobState = JobState.COMPLETED) -> Job:
    spec = job_spec("reverse_string", (), {"data": "secret"}, job_id="j1", cipher=cipher)
    error = cipher.seal_error({"type": "ValueError", "message": "bad secret"}, "j1", spec["task"])
    failed = event(EventKind.FAILED, 1.0, error=f"ValueError: {error['message']}")
    return Job(
        id="j1",
        task="reverse_string",
        kwargs=unpack_call(spec["payload"])[1],
        state=state,
        result=cipher.seal_value("terces", ctx=context(RESULT, "j1", "reverse_string")),
        error=error if state is JobState.DEAD else None,
        events=(failed,),
    )


def test_read_job_opens_everything(cipher: PayloadCipher) -> None:
    wire = _sealed_job(cipher).to_wire()
    job = read_job(wire, cipher)
    assert (job.args, job.kwargs, job.result) == ([], {"data": "secret"}, "terces")
    assert job.events[0]["error"] == "ValueError: bad secret"
    assert final_result(job) == "terces"


def test_read_job_without_the_key_leaves_it_sealed(cipher: PayloadCipher) -> None:
    wire = _sealed_job(cipher).to_wire()
    for other in (None, PayloadCipher.from_keys(NEW)):
        job = read_job(wire, other)
        assert is_sealed_call(job.args, job.kwargs) and is_sealed(job.result)
        with pytest.raises(PayloadDecryptError, match="encrypted"):
            final_result(job)


def test_failed_job_error_is_opened(cipher: PayloadCipher) -> None:
    job = read_job(_sealed_job(cipher, JobState.DEAD).to_wire(), cipher)
    assert job.error is not None and job.error["message"] == "bad secret"
    with pytest.raises(JobFailed, match="bad secret"):
        final_result(job)


def test_batch_items_are_sealed(cipher: PayloadCipher) -> None:
    items = [("t", {"a": 1}), ("t", [1], {}), {"task": "t", "args": [2], "kwargs": {"b": 3}}]
    specs = [batch_item(i, cipher, MAX_PAYLOAD) for i in items]
    calls = [unpack_call(s["payload"]) for s in specs]
    assert all(args == [] and is_sealed(kwargs) for args, kwargs in calls)
    opened = [
        cipher.open_call([], kwargs, ctx=context(CALL, s["id"], "t"))
        for s, (_, kwargs) in zip(specs, calls, strict=True)
    ]
    assert opened == [([], {"a": 1}), ([1], {}), ([2], {"b": 3})]
    plain = batch_item(("t", {"a": 1}), None, MAX_PAYLOAD)  # no key: as it was
    assert unpack_call(plain["payload"]) == ([], {"a": 1})


# -- conveyor keygen -------------------------------------------------------------------


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(keygen_command, [str(a) for a in args], catch_exceptions=False)


def test_keygen_prints_a_key() -> None:
    result = run()
    assert result.exit_code == 0
    PayloadCipher.from_keys(result.output.strip())


def test_keygen_out_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "payload.keys"
    assert run("--out", path).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert load_payload_keys(path).key_count == 1
    again = CliRunner().invoke(keygen_command, ["--out", str(path)])
    assert again.exit_code == 1 and "--force" in again.output
    assert path.read_text() == first
    assert run("--out", path, "--force").exit_code == 0
    assert path.read_text() != first and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keygen_add_to_then_primary(tmp_path: Path) -> None:
    path = tmp_path / "payload.keys"
    path.write_text(f"# ours\n{OLD}\n")
    path.chmod(0o600)
    assert run("--add-to", path).exit_code == 0
    keys = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert keys[0] == OLD and len(keys) == 2  # decrypt-only: appended
    assert run("--add-to", path, "--primary").exit_code == 0
    keys = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(keys) == 3 and keys[1] == OLD
    assert path.read_text().startswith("# ours\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keygen_usage_errors(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(OLD)
    for args in (["--primary"], ["--out", str(tmp_path / "x"), "--add-to", str(path)]):
        result = CliRunner().invoke(keygen_command, args)
        assert result.exit_code == 2, result.output
    bad = tmp_path / "bad"
    bad.write_text("nope\n")
    result = CliRunner().invoke(keygen_command, ["--add-to", str(bad)])
    assert result.exit_code == 1 and "not a Fernet key" in result.output
    assert bad.read_text() == "nope\n"
    assert isinstance(keygen_command, click.Command)


def test_a_spec_map_without_an_id_gets_one_before_sealing(cipher: PayloadCipher) -> None:
    spec = batch_item({"task": "t", "id": None, "kwargs": {"a": 1}}, cipher, MAX_PAYLOAD)
    assert spec["id"]
    _, kwargs = unpack_call(spec["payload"])
    assert cipher.open_call([], kwargs, ctx=context(CALL, spec["id"], "t")) == (
        [],
        {"a": 1},
    )
