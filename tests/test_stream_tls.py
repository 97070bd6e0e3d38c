"""`ssn stream` over mutual TLS to a real tritonserver started with `--grpc-use-ssl-mutual` (certificates made by
the openssl command line for this test): the right certificates stream; a missing client certificate, a plain
connection, or a key that does not match its certificate are refused with a message naming the problem."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from stream_helpers import SERVER_READY_S
from test_stream_cli import ssn_stream

from pipeline.deploy.triton_server import TritonProcess
from pipeline.stream.sinks import read_records

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is needed for certificates"
)


def _certificates(folder) -> dict[str, str]:
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    days = ("-days", "2")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        *days,
        "-subj",
        "/CN=line CA",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, ext in (("server", "/CN=localhost", ["-extfile", "san.ext"]), ("client", "/CN=camera box", [])):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            *days,
            *ext,
        )
    return {name: str(folder / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_mutual_tls_streams_and_wrong_credentials_are_refused(stream_assets, tmp_path):
    certs = _certificates(tmp_path)
    flags = [
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={certs['server.pem']}",
        f"--grpc-server-key={certs['server.key']}",
        f"--grpc-root-cert={certs['ca.pem']}",
    ]
    server = TritonProcess(stream_assets.repository, extra_args=flags, log_path=tmp_path / "server.log")
    server.start()
    try:
        server.wait_ready(SERVER_READY_S)
        common = (
            "--server",
            server.grpc_url,
            "--synthetic-root",
            str(stream_assets.synthetic),
            "--frames",
            "5",
            "--connect-timeout",
            "3",
            "--camera",
            "a=synthetic:metal",
        )
        root = ("--tls-root-cert", certs["ca.pem"])
        client = ("--tls-client-key", certs["client.key"], "--tls-client-cert", certs["client.pem"])
        run = ssn_stream(*common, *root, *client, "--out", str(tmp_path / "out"))
        assert run.returncode == 0, run.stderr
        records = read_records(tmp_path / "out" / "results.jsonl")
        assert [(r["seq"], r["status"]) for r in records] == [(k, "ok") for k in range(5)]
        for args, message in [
            (root, "no server is reachable"),  # the server wants a client certificate
            ((), "no server is reachable"),  # plain text to a TLS port
            (
                (*root, "--tls-client-key", certs["server.key"], "--tls-client-cert", certs["client.pem"]),
                "do not load as a matching PEM certificate and key",
            ),
        ]:
            run = ssn_stream(*common, *args, timeout=120)
            assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
    finally:
        server.stop()
