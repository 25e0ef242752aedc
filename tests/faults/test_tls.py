"""rediss:// against a server with a certificate from our own CA: verified on every connection
(ours and Celery's), refused without the CA. Valkey's bundled binary has no TLS, so a TLS
terminator in this process stands in front of it (a managed Redis's TLS endpoint, in effect)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adjustments.errors import NotAccepted
from adjustments.sandbox import SandboxServer
from tests.helpers import run_cli

from .conftest import (
    Deploy,
    RedisProcess,
    assert_all_done_once,
    fault_env,
    producer_for,
)

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(
    OPENSSL is None, reason="needs the openssl command for certificates"
)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    assert OPENSSL is not None

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=adjustments-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


class TLSTerminator:
    """Accept TLS on a loopback port and relay the plain bytes to ``backend_port``."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # e.g. the client refused our certificate
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=self._pump, args=(backend, client), daemon=True).start()
        self._pump(client, backend)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def tls(redis_proc: RedisProcess, tmp_path: Path) -> Iterator[tuple[TLSTerminator, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    proxy = TLSTerminator(cert, key, redis_proc.port)
    yield proxy, ca
    proxy.close()


def test_rediss_with_our_ca_verifies_and_works(
    tls: tuple[TLSTerminator, Path],
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """The CA given once in the URL serves the producer, the worker's client and Celery's
    broker connection: requests complete, each executed once."""
    proxy, ca = tls
    url = f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}"
    deployment = deploy(url)
    producer, worker = deployment.producer, deployment.worker
    ids = [producer.cancel("ev", f"tls_{n}").id for n in range(10)]
    assert_all_done_once(producer, ids, fault_sandbox, worker=worker)
    assert "insecure" not in worker.log_text().lower()


def test_rediss_without_the_ca_is_refused(
    tls: tuple[TLSTerminator, Path], fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Without the CA the certificate cannot be verified: cancel() raises NotAccepted and the
    worker exits 2 with one line, instead of talking to an unverified server."""
    proxy, _ = tls
    env = fault_env(f"rediss://127.0.0.1:{proxy.port}/0", fault_sandbox, tmp_path / "data")
    producer = producer_for(env)
    try:
        with pytest.raises(NotAccepted, match="certificate verify failed"):
            producer.cancel("ev", "unverified")
    finally:
        producer.close()
    result = run_cli(["worker"], env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("adjustments: error: ")
    assert "certificate" in result.stderr
