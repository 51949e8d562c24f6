"""The payload codec's keys and policy, without a server."""

from __future__ import annotations

import base64
import os

import pytest
from temporalio.api.common.v1 import Payload

from worker.codec import (KEY_FILE_ENV, KEYS_ENV, CodecError, EncryptionCodec, codec_policy, is_local,
                          keys_from_environment, parse_keys)

RAW_A, RAW_B = os.urandom(32), os.urandom(32)
A = "a:" + base64.b64encode(RAW_A).decode()
B = "b:" + base64.b64encode(RAW_B).decode()


def test_keys_in_order_from_env_or_file(tmp_path):
    assert parse_keys(f"{B}, {A}", KEYS_ENV) == [("b", RAW_B), ("a", RAW_A)]
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\n{B}\n{A}  # old, until the last run that used it is gone\n")
    assert keys_from_environment({KEY_FILE_ENV: str(path)}) == [("b", RAW_B), ("a", RAW_A)]
    assert keys_from_environment({KEYS_ENV: A, KEY_FILE_ENV: str(path)}) == [("a", RAW_A)]  # the variable wins
    assert keys_from_environment({}) == []


@pytest.mark.parametrize("text, fragment", [
    ("a:" + base64.b64encode(os.urandom(16)).decode(), "key 'a' is 16 bytes; AES-256 needs 32"),
    ("a:not*base64", "key 'a' is not valid base64"),
    ("justakey", "entry 1 is not 'id:base64key'"),
    (f"{A},{A}", "lists key id 'a' twice"),
])
def test_bad_keys_are_one_line_without_key_material(text, fragment):
    with pytest.raises(CodecError) as bad:
        parse_keys(text, KEYS_ENV)
    assert fragment in str(bad.value) and "\n" not in str(bad.value)
    assert text.partition(":")[2] not in str(bad.value) or not text.partition(":")[2]


def test_unreadable_or_empty_key_file(tmp_path):
    with pytest.raises(CodecError, match="cannot read it"):
        keys_from_environment({KEY_FILE_ENV: str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(CodecError, match="holds no key"):
        keys_from_environment({KEY_FILE_ENV: str(tmp_path / "empty")})


@pytest.mark.parametrize("address, local", [("localhost:7233", True), ("127.0.0.1:7233", True), ("[::1]:7233", True),
                                            ("temporal:7233", False), ("ns.acct.tmprl.cloud:7233", False),
                                            ("10.0.0.5:7233", False)])
def test_is_local(address, local):
    assert is_local(address) is local


def test_policy():
    assert codec_policy("127.0.0.1:7233", uses_tls=False, environ={}) is None  # rollback up's demo
    assert codec_policy("temporal:7233", uses_tls=False, environ={"ROLLBACK_CODEC": "off"}) is None
    assert isinstance(codec_policy("127.0.0.1:7233", uses_tls=False, environ={KEYS_ENV: A}), EncryptionCodec)
    for address, tls, environ in (("temporal:7233", False, {}), ("127.0.0.1:7233", True, {}),
                                  ("127.0.0.1:7233", False, {"ROLLBACK_CODEC": "on"})):
        with pytest.raises(CodecError, match="payload encryption is required"):
            codec_policy(address, uses_tls=tls, environ=environ)
    with pytest.raises(CodecError, match="is not one of auto, on, off"):
        codec_policy("temporal:7233", uses_tls=False, environ={"ROLLBACK_CODEC": "maybe"})


async def test_sealed_with_the_first_key_opened_by_any_and_tamper_evident():
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"reason":"x"}')
    codec = EncryptionCodec(parse_keys(f"{B},{A}", KEYS_ENV))
    first, second = await codec.encode([plain, plain])
    assert first.metadata["encryption-key-id"] == b"b" and first.data != second.data  # a fresh nonce each time
    assert b"reason" not in first.data
    assert await codec.decode([first, plain]) == [plain, plain]  # plain payloads (older runs) pass through
    old = await EncryptionCodec([("a", RAW_A)]).encode([plain])
    assert await codec.decode(old) == [plain]
    tampered = Payload(metadata=first.metadata, data=first.data[:-1] + bytes([first.data[-1] ^ 1]))
    with pytest.raises(CodecError, match="key id 'b' does not authenticate"):
        await codec.decode([tampered])


async def test_failure_messages_are_encrypted_too():
    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    from worker.codec import data_converter

    converter = data_converter(EncryptionCodec(parse_keys(A, KEYS_ENV)))
    failure = Failure()
    await converter.encode_failure(ApplicationError("restore of shop-secret-db failed"), failure)
    assert b"shop-secret-db" not in failure.SerializeToString()
    assert str(await converter.decode_failure(failure)) == "restore of shop-secret-db failed"
