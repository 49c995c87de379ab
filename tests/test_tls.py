"""Redis over TLS, verified: a redis-server of the test's own with --tls-port and a CA made
here; a job runs end to end over rediss:// with OFFLOAD_REDIS_CA and a client certificate
(mutual TLS); a wrong CA or host name fails closed with an error naming OFFLOAD_REDIS_CA."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from offload.broker.connection import redis_client
from offload.config import Settings

from .conftest import free_port, make_platform, wait_for


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def make_ca(folder: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue(
    folder: Path,
    name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    hosts: list[str],
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(_key_pem(key))
    pem.chmod(0o600)
    return crt, pem


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A redis-server answering only TLS on loopback, requiring client certificates; its
    rediss:// URL (host "localhost") and the folder of the PKI."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    crt, key = issue(folder, "server", ca, ["localhost"])
    issue(folder, "client", ca, ["offload-client"])
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(crt), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(folder / "ca.pem"), "--tls-auth-clients", "yes",
         "--save", "", "--dir", str(folder), "--databases", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://localhost:{port}"
    settings = Settings(
        redis_url=url + "/0",
        redis_ca=folder / "ca.pem",
        redis_cert=folder / "client.crt",
        redis_key=folder / "client.key",
    )

    def up() -> bool:
        try:
            return bool(redis_client(settings, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, "redis-server with TLS")
        yield url, folder
    finally:
        proc.terminate()
        proc.wait(10)


def tls_env(folder: Path, ca: str = "ca.pem") -> dict[str, str]:
    return {
        "OFFLOAD_REDIS_CA": str(folder / ca),
        "OFFLOAD_REDIS_CERT": str(folder / "client.crt"),
        "OFFLOAD_REDIS_KEY": str(folder / "client.key"),
    }


def test_a_job_runs_end_to_end_over_verified_tls(
    tls_redis: tuple[str, Path], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    url, folder = tls_redis
    p = make_platform(url, tmp_path / "home", **tls_env(folder))
    try:
        p.start_worker()
        job = p.client.submit("offload/base", ["sh", "-c", "echo over-tls"], memory="64m")
        result = job.result(timeout=120)
        assert result.status == "succeeded", p.worker_log()
        assert any("over-tls" in line.text for line in job.logs())
        done = p.cli("status", job.id)
        assert done.returncode == 0 and "succeeded" in done.stdout, done.stderr
    finally:
        p.kill_worker()


def test_without_the_client_certificate_the_server_refuses(
    tls_redis: tuple[str, Path], tmp_path: Path
) -> None:
    url, folder = tls_redis
    settings = Settings(redis_url=url + "/0", redis_ca=folder / "ca.pem")
    with pytest.raises(redis.ConnectionError):
        redis_client(settings, socket_timeout=2).ping()


@pytest.mark.parametrize("case", ["wrong CA", "wrong host name"], ids=["wrong-ca", "wrong-host"])
def test_a_wrong_ca_or_host_fails_closed_naming_the_setting(
    tls_redis: tuple[str, Path], tmp_path: Path, case: str
) -> None:
    url, folder = tls_redis
    if case == "wrong CA":
        p = make_platform(url, tmp_path / "home", **tls_env(folder, "other-ca.pem"))
    else:  # 127.0.0.1 is not in the server's certificate (only "localhost" is)
        p = make_platform(url.replace("localhost", "127.0.0.1"), tmp_path / "home",
                          **tls_env(folder))  # fmt: skip
    submit = p.cli("submit", "offload/base", "--", "true", timeout=60)
    assert submit.returncode in (2, 4), submit.stderr
    assert "OFFLOAD_REDIS_CA" in submit.stderr and "Traceback" not in submit.stderr
    worker = p.cli("worker", timeout=60)
    assert worker.returncode == 2, worker.stderr[-2000:]
    assert "OFFLOAD_REDIS_CA" in worker.stderr and "Traceback" not in worker.stderr


def test_plain_redis_to_another_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    from offload.broker.connection import warn_if_plain

    assert warn_if_plain(Settings(redis_url="redis://redis.internal:6379/0"))
    assert "plain redis://" in caplog.text and "OFFLOAD_REDIS_CA" in caplog.text
    caplog.clear()
    assert not warn_if_plain(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert not warn_if_plain(Settings(redis_url="rediss://redis.internal:6379/0"))
    assert caplog.text == ""
