"""Payload encryption: every input, result, signal, update, query answer, heartbeat and failure
message the SDK sends to Temporal is sealed with AES-256-GCM before it leaves the process.

Keys come from `ROLLBACK_CODEC_KEYS` (`id:base64key` entries separated by commas or whitespace)
or the file `ROLLBACK_CODEC_KEY_FILE` (one entry per line, `#` comments). The first key encrypts;
every key listed decrypts, so a rotation is: put the new key first, keep the old ones after it
until no run that used them is still needed.

Whether a process must encrypt is `codec_policy`: on by default for a remote cluster, off for
the local dev server of `rollback up` when no key is set, `ROLLBACK_CODEC=off` to opt out.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

KEYS_ENV = "ROLLBACK_CODEC_KEYS"
KEY_FILE_ENV = "ROLLBACK_CODEC_KEY_FILE"
MODE_ENV = "ROLLBACK_CODEC"  # auto (default) | on | off

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12  # 96 bits, random per payload: GCM's recommended nonce size
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEYGEN_HINT = ("make one with: python3 -c \"import base64,os; "
               "print('k1:' + base64.b64encode(os.urandom(32)).decode())\"")


class CodecError(Exception):
    """A key that is missing, malformed or wrong; the message is one line and never holds key material."""


class CodecKeyMissing(CodecError):
    """A payload was sealed with a key id this process was not given."""

    def __init__(self, key_id: str, known: Sequence[str]):
        self.key_id = key_id
        super().__init__(f"a payload is encrypted with key id {key_id!r}, which this process does not have "
                         f"(it has: {', '.join(known)}); add that key after the current one in "
                         f"{KEYS_ENV} or {KEY_FILE_ENV}")


def parse_keys(text: str, source: str) -> list[tuple[str, bytes]]:
    """`id:base64key` entries (commas, spaces or newlines between them; `#` starts a comment)."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        entries += [entry for entry in re.split(r"[\s,]+", line) if entry]
    keys: list[tuple[str, bytes]] = []
    for number, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        if not sep or not KEY_ID_PATTERN.match(key_id):
            raise CodecError(f"{source} entry {number} is not 'id:base64key' with an id of letters, digits, "
                             f"'.', '_' or '-' ({KEYGEN_HINT})")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CodecError(f"{source} key {key_id!r} is not valid base64 ({KEYGEN_HINT})") from None
        if len(key) != 32:
            raise CodecError(f"{source} key {key_id!r} is {len(key)} bytes; AES-256 needs 32 ({KEYGEN_HINT})")
        if any(key_id == known for known, _ in keys):
            raise CodecError(f"{source} lists key id {key_id!r} twice")
        keys.append((key_id, key))
    return keys


def keys_from_environment(environ: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
    """The keys of `ROLLBACK_CODEC_KEYS`, else of the file `ROLLBACK_CODEC_KEY_FILE`, else none."""
    environ = os.environ if environ is None else environ
    if environ.get(KEYS_ENV, "").strip():
        keys = parse_keys(environ[KEYS_ENV], KEYS_ENV)
    elif environ.get(KEY_FILE_ENV):
        path = Path(environ[KEY_FILE_ENV])
        try:
            text = path.read_text()
        except OSError as exc:
            raise CodecError(f"{KEY_FILE_ENV}={path}: cannot read it ({exc.strerror or exc})") from None
        keys = parse_keys(text, f"{KEY_FILE_ENV} ({path})")
        if not keys:
            raise CodecError(f"{KEY_FILE_ENV} ({path}) holds no key ({KEYGEN_HINT})")
    else:
        return []
    return keys


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM per payload; the first key encrypts, all keys decrypt (rotation).

    Payloads without `encoding: binary/encrypted` pass through `decode` unchanged, so histories
    written before encryption was switched on still replay and read."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]):
        if not keys:
            raise CodecError("the payload codec needs at least one key")
        self._current_id, current = keys[0]
        self._current = AESGCM(current)
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        sealed = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed.append(Payload(
                metadata={"encoding": ENCODING, KEY_ID: self._current_id.encode()},
                data=nonce + self._current.encrypt(nonce, payload.SerializeToString(), None),
            ))
        return sealed

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        opened = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                opened.append(payload)
                continue
            key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
            aead = self._keys.get(key_id)
            if aead is None:
                raise CodecKeyMissing(key_id, self.key_ids)
            try:
                plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
            except InvalidTag:
                raise CodecError(f"a payload encrypted with key id {key_id!r} does not authenticate: the key "
                                 f"given for that id is not the one it was sealed with, or the data was "
                                 f"altered") from None
            opened.append(Payload.FromString(plain))
        return opened


def data_converter(codec: PayloadCodec | None = None) -> DataConverter:
    """The one converter every client, worker and replayer uses: pydantic, plus the codec when
    given (then failure messages and stack traces are encrypted too, not only payloads)."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec,
                               failure_converter_class=DefaultFailureConverterWithEncodedAttributes)


def is_local(address: str) -> bool:
    """Whether a `host:port` address is this machine (the embedded dev server of `rollback up`)."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def codec_policy(address: str, uses_tls: bool, environ: dict[str, str] | None = None) -> EncryptionCodec | None:
    """The codec this process must use to talk to the cluster at `address`, or None for plain text.

    With keys configured, always encrypt. Without keys, plain text is allowed only for a local
    server reached without TLS (the embedded demo) or when `ROLLBACK_CODEC=off` says so; anything
    else is refused, so a deployment cannot silently write secrets-adjacent data in plain text."""
    environ = os.environ if environ is None else environ
    mode = environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise CodecError(f"{MODE_ENV}={mode!r} is not one of auto, on, off")
    if mode == "off":
        return None
    keys = keys_from_environment(environ)
    if keys:
        return EncryptionCodec(keys)
    if mode == "auto" and is_local(address) and not uses_tls:
        return None
    why = f"{MODE_ENV}=on" if mode == "on" else f"Temporal at {address} is not a local plain-text dev server"
    raise CodecError(f"payload encryption is required ({why}) but no key is set: set {KEYS_ENV} or "
                     f"{KEY_FILE_ENV} to 'id:base64key' entries ({KEYGEN_HINT}), or {MODE_ENV}=off to "
                     f"store inputs and results in plain text")
