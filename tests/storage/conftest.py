"""An S3-compatible server (MinIO, built by tests/storage/build.sh) on loopback for the s3:// tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving.serving_helpers import answers_ok_within, free_port

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
ACCESS_KEY = "slimserve-test"
SECRET_KEY = "slimserve-test-secret"
BUCKET = "models"


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )


def _minio_binary() -> Path:
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=3600)
    return Path(subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin"], check=True, capture_output=True, text=True).stdout.strip())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    binary = _minio_binary()
    data = tmp_path_factory.mktemp("minio-data")
    port, console = free_port(), free_port()
    env = {**os.environ, "MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY, "MINIO_BROWSER": "off",
           "MINIO_UPDATE": "off"}
    log = open(data.parent / "minio.log", "wb")
    process = subprocess.Popen(
        [str(binary), "server", str(data), "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}", "--quiet"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        if not answers_ok_within(f"{endpoint}/minio/health/live", process, timeout_s=60):
            raise RuntimeError(f"minio did not start; see {data.parent / 'minio.log'}")
        server = S3Server(endpoint, BUCKET)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Credentials as a compression pod gets them (environment), and a private download cache."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path / "cache"))
    return s3_server
