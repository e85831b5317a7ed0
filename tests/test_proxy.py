"""deploy/caddy/Caddyfile, run by a real Caddy in front of the real API.

The Caddyfile of the Compose deployment is started as it is, its variables pointing at free
ports of this host: Caddy serves the site over HTTPS with a certificate of our own (the
"your own certificate" choice of docs/tls.md), which a client trusting its CA verifies, and
hands the requests to the API; plain HTTP is redirected to HTTPS.  The other two choices
(Caddy's internal CA, ACME) are checked to be configurations Caddy accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from api_system import ApiSystem
from cryptography.hazmat.primitives import serialization
from services import free_port, wait_port

from cli import brokertls
from core.network import load_network

REPO = Path(__file__).resolve().parent.parent
CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"


def caddy_binary() -> str:
    found = shutil.which("caddy")
    assert found, "caddy is not installed (Debian: apt-get install caddy; make test does it)"
    return found


def caddy_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment Caddy runs with: its state in ``tmp_path``, the Caddyfile's
    variables from ``variables``."""
    home = tmp_path / "caddy-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home), XDG_CONFIG_HOME=str(home))
    env.update(variables)
    return env


def site_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for localhost it issued: (ca, cert, key) files."""
    ca, ca_key = brokertls.make_ca("site")
    cert, key = brokertls.make_server_cert(ca, ca_key, ["localhost"])
    paths = directory / "ca.crt", directory / "site.crt", directory / "site.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def api(database_url: str) -> Iterator[ApiSystem]:
    now = datetime.now(UTC)
    system = ApiSystem(database_url, load_network(REPO / "examples" / "small.yaml"), now, now)
    system.serve()
    try:
        yield system
    finally:
        system.stop()


def test_caddy_serves_the_api_over_https(api: ApiSystem, tmp_path: Path) -> None:
    ca, cert, key = site_certificate(tmp_path)
    https_port, http_port = free_port(), free_port()
    env = caddy_env(
        tmp_path,
        SYMBIONT_SITE=f"localhost:{https_port}",
        SYMBIONT_SITE_TLS=f"{cert} {key}",
        SYMBIONT_API=f"127.0.0.1:{api.port}",
        SYMBIONT_HTTP_PORT=str(http_port),
        SYMBIONT_CADDY_ADMIN="off",
    )
    log = (tmp_path / "caddy.log").open("wb")
    caddy = subprocess.Popen(
        [caddy_binary(), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", https_port, timeout=30)
        base = f"https://localhost:{https_port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=10) as client:
            health = client.get(f"{base}/healthz")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert health.http_version in ("HTTP/1.1", "HTTP/2")
            ready = client.get(f"{base}/readyz")  # the API's own answer, passed through
            assert ready.status_code == 503 and "no network applied" in str(ready.json())
        # a client that does not trust the certificate's CA gets no answer
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/healthz", timeout=10)
        # plain HTTP is sent to HTTPS
        wait_port("127.0.0.1", http_port, timeout=30)
        plain = httpx.get(f"http://localhost:{http_port}/healthz", timeout=10)
        assert plain.status_code in (301, 308)
        assert plain.headers["location"].startswith("https://localhost")
    finally:
        caddy.terminate()
        try:
            caddy.wait(timeout=15)
        except subprocess.TimeoutExpired:
            caddy.kill()
            caddy.wait()
        log.close()


@pytest.mark.parametrize(
    "site_tls",
    [None, "operator@park.example"],
    ids=["internal CA (default)", "ACME with an e-mail address"],
)
def test_caddyfile_choices_are_valid(tmp_path: Path, site_tls: str | None) -> None:
    variables = {"SYMBIONT_SITE": "symbiont.park.example"}
    if site_tls is not None:
        variables["SYMBIONT_SITE_TLS"] = site_tls
    done = subprocess.run(
        [caddy_binary(), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=caddy_env(tmp_path, **variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    [policy] = config["apps"]["tls"]["automation"]["policies"]
    assert policy["subjects"] == ["symbiont.park.example"]
    issuers = [issuer["module"] for issuer in policy["issuers"]]
    if site_tls is None:
        assert issuers == ["internal"]
    else:
        assert "acme" in issuers and policy["issuers"][0].get("email") == site_tls
    [server] = config["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]
    assert '"dial":"api:8000"' in done.stdout.replace(" ", "")
