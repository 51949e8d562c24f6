"""A TLS terminator in front of the dev server (which speaks plain gRPC), the way a real cluster's
load balancer or Temporal Cloud's front end sits: it demands a client certificate signed by its
CA, then forwards bytes to the dev server. It also reads the HTTP/2 request headers it forwards
(HPACK), so a test can see what the SDK sent (namespace, `authorization: Bearer <api key>`).

Certificates are made here with `cryptography`: a CA, a server certificate for 127.0.0.1, client
certificates (valid, expired) and an unrelated CA.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """A throwaway CA that writes PEM files into `directory`."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{name}.pem"
        self.pem.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = False, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if expired
                      else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)))
        builder = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


@dataclass
class TlsTerminator:
    """Listens with TLS on 127.0.0.1:<port>, demands a client certificate from `client_ca` (unless
    None), forwards to `upstream` (host:port). `headers` collects each request's HTTP/2 headers."""

    upstream: str
    server: Issued
    client_ca: Path | None
    port: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-terminator", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server.cert, self.server.key)
        context.set_alpn_protocols(["h2"])  # gRPC clients insist on HTTP/2 through ALPN
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.client_ca)
        return context

    def start(self) -> "TlsTerminator":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._loop.set_exception_handler(self._handshake_failed)
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._context())
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()
        server.close()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:  # open connections: end them before the loop closes
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _handshake_failed(self, loop, context) -> None:
        # a refused client certificate surfaces here, not in _handle; keep it for the test's message
        self.handshake_errors.append(str(context.get("exception") or context.get("message")))

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.rsplit(":", 1)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        sniffer = _HeaderSniffer(self.headers)

        async def pipe(reader, writer, sniff) -> None:
            try:
                while data := await reader.read(65536):
                    if sniff is not None:
                        sniff(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, upstream_writer, sniffer.feed),
                             pipe(upstream_reader, client_writer, None))


class _HeaderSniffer:
    """Decodes the HEADERS (+CONTINUATION) frames of the client's HTTP/2 stream with one HPACK
    decoder per connection (its dynamic table spans the connection)."""

    def __init__(self, out: list[dict[str, str]]):
        from hpack import Decoder

        self._out = out
        self._buffer = b""
        self._preface = False
        self._decoder = Decoder()
        self._block = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if not self._preface:
            if len(self._buffer) < len(H2_PREFACE):
                return
            self._buffer = self._buffer[len(H2_PREFACE):]
            self._preface = True
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            kind, flags = self._buffer[3], self._buffer[4]
            if len(self._buffer) < 9 + length:
                return
            payload, self._buffer = self._buffer[9:9 + length], self._buffer[9 + length:]
            if kind == 0x1:  # HEADERS: optional padding length and priority fields come first
                pad = payload[0] if flags & 0x8 else 0
                payload = payload[1 if flags & 0x8 else 0:len(payload) - pad]
                if flags & 0x20:
                    payload = payload[5:]
                self._block = payload
            elif kind == 0x9:  # CONTINUATION
                self._block += payload
            else:
                continue
            if flags & 0x4:  # END_HEADERS
                decoded = self._decoder.decode(self._block)
                self._out.append({_text(name): _text(value) for name, value in decoded})
                self._block = b""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value

