"""HTTP tools end to end: registered over the API, run by the executor against a real HTTP
receiver on 127.0.0.1 (uvicorn), which records what arrived and answers as each test asks."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from app.api.context import AppContext
from app.main import create_app
from app.tools.executor import ToolOutcome, execute, validate_arguments
from app.tools.http import spec_from_definition
from app.tools.models import ToolDefinition
from app.tools.spec import RetryPolicy, ToolContext, ToolInputError, ToolSpec
from tests.conftest import TokenFactory, bearer, client_for, make_settings
from tests.receiver import Receiver, serving

ALLOWLIST = ["127.0.0.1"]
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.05)


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async with serving(Receiver()) as app:
        yield app


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path


def self_signed_certificate(directory: Path, host_name: str) -> Certificate:
    """A self-signed certificate valid for `host_name` only (no IP address in it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


@pytest.fixture
def tools_app(context_factory: Callable[..., AppContext]) -> tuple[AppContext, Any]:
    settings = make_settings(outbound_allowlist=ALLOWLIST)
    context = context_factory(settings)
    return context, create_app(settings, context=context)


@pytest.fixture
async def http(tools_app: tuple[AppContext, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tools_app[1]) as client:
        yield client


def unique(prefix: str) -> str:
    return f"/{prefix}/{uuid.uuid4().hex}"


TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["title"],
    "additionalProperties": False,
}


async def register(
    http: httpx.AsyncClient, headers: dict[str, str], url: str, **fields: Any
) -> httpx.Response:
    body: dict[str, Any] = {
        "name": "create_ticket",
        "description": "Open a support ticket.",
        "input_schema": TICKET_SCHEMA,
        "url": url,
    }
    body.update(fields)
    return await http.post("/v1/tools", json=body, headers=headers)


async def load_row(context: AppContext, tenant: str, name: str) -> ToolDefinition:
    async with context.session_factory() as db:
        statement = select(ToolDefinition).where(
            ToolDefinition.tenant_id == tenant, ToolDefinition.name == name
        )
        return (await db.execute(statement)).scalar_one()


async def load_spec(
    context: AppContext,
    tenant: str,
    name: str,
    allowlist: list[str] = ALLOWLIST,
    tls_verify: ssl.SSLContext | None = None,
) -> ToolSpec:
    """The spec the registry would build, with this allowlist and fast retries."""
    row = await load_row(context, tenant, name)
    spec = spec_from_definition(row, allowlist=allowlist, tls_verify=tls_verify)
    return dataclasses.replace(spec, retry=FAST_RETRY)


def tool_context(context: AppContext, tenant: str) -> ToolContext:
    return ToolContext(
        tenant_id=tenant,
        session_id="ses_test",
        tool_use_id=f"toolu_{uuid.uuid4().hex[:8]}",
        session_factory=context.session_factory,
        idempotency_key=f"idem-{uuid.uuid4().hex}",
    )


async def run_tool(
    context: AppContext,
    tenant: str,
    arguments: dict[str, Any],
    *,
    name: str = "create_ticket",
    allowlist: list[str] = ALLOWLIST,
) -> tuple[ToolOutcome, ToolContext]:
    spec = await load_spec(context, tenant, name, allowlist)
    call_context = tool_context(context, tenant)
    return await execute(spec, arguments, call_context), call_context


def admin_headers(make_token: TokenFactory, tenant: str) -> dict[str, str]:
    return bearer(make_token(tenant, roles=("admin",)))


async def test_signed_post_carries_key_body_and_verifiable_signature(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"whsec-{uuid.uuid4().hex}"
    env_name = f"TOOL_SECRET_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env_name, secret)
    path = unique("echo")
    created = await register(
        http, admin_headers(make_token, tenant), receiver.url(path), secret_ref=f"env:{env_name}"
    )
    assert created.status_code == 201, created.text
    assert created.json()["has_secret"] is True
    assert "secret_ref" not in created.json() and env_name not in created.text

    arguments = {"title": "Printer on fire", "priority": 1}
    outcome, call = await run_tool(tools_app[0], tenant, arguments)

    assert outcome.status == "succeeded", outcome.content
    assert outcome.result == {"echo": arguments}
    assert '<untrusted-data source="tool:create_ticket">' in outcome.content
    [request] = receiver.hits(path)
    assert json.loads(request.body) == arguments
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == call.idempotency_key
    timestamp = request.headers["x-agent-platform-timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert request.headers["x-agent-platform-signature"] == "v1=" + expected.hexdigest()
    assert secret not in json.dumps(request.headers)


async def test_file_secret_is_read_per_call_so_rotation_needs_no_restart(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "tool.secret"
    secret_file.write_text("first-secret\n")
    path = unique("echo")
    created = await register(
        http,
        admin_headers(make_token, tenant),
        receiver.url(path),
        secret_ref=f"file:{secret_file}",
    )
    assert created.status_code == 201, created.text
    spec = await load_spec(tools_app[0], tenant, "create_ticket")
    for secret in ("first-secret", "second-secret"):
        secret_file.write_text(secret + "\n")
        outcome = await execute(spec, {"title": "t"}, tool_context(tools_app[0], tenant))
        assert outcome.status == "succeeded", outcome.content
        request = receiver.hits(path)[-1]
        timestamp = request.headers["x-agent-platform-timestamp"]
        digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, "sha256")
        assert request.headers["x-agent-platform-signature"] == f"v1={digest.hexdigest()}"


async def test_missing_secret_fails_without_sending_or_leaking(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    path = unique("echo")
    missing = tmp_path / "absent.secret"
    created = await register(
        http, admin_headers(make_token, tenant), receiver.url(path), secret_ref=f"file:{missing}"
    )
    assert created.status_code == 201, created.text
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "failed"
    assert "cannot be read" in outcome.content
    assert receiver.hits(path) == []


async def test_unsigned_tool_still_sends_an_idempotency_key_and_text_comes_back(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("text")
    created = await register(http, admin_headers(make_token, tenant), receiver.url(path))
    assert created.status_code == 201 and created.json()["has_secret"] is False
    outcome, call = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "succeeded"
    assert outcome.result == "plain words, not JSON"
    [request] = receiver.hits(path)
    assert request.headers["idempotency-key"] == call.idempotency_key
    assert "x-agent-platform-signature" not in request.headers


async def test_invalid_arguments_never_reach_the_receiver(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("echo")
    await register(http, admin_headers(make_token, tenant), receiver.url(path))
    spec = await load_spec(tools_app[0], tenant, "create_ticket")
    with pytest.raises(ToolInputError, match="priority"):
        validate_arguments(spec, {"title": "t", "priority": 9})
    assert receiver.hits(path) == []


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_transient_statuses_are_retried_for_an_idempotent_tool(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
    status: int,
) -> None:
    path = unique(f"status/{status}")
    created = await register(
        http, admin_headers(make_token, tenant), receiver.url(path), idempotent=True
    )
    assert created.status_code == 201, created.text
    outcome, call = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "failed"
    assert outcome.attempts == 3
    hits = receiver.hits(path)
    assert len(hits) == 3
    # Every retry is the same call: one idempotency key for the receiver to de-duplicate on.
    assert {hit.headers["idempotency-key"] for hit in hits} == {call.idempotency_key}
    assert f"HTTP {status}" in outcome.content


async def test_5xx_is_not_retried_for_a_non_idempotent_tool(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("status/503")
    await register(http, admin_headers(make_token, tenant), receiver.url(path), idempotent=False)
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "failed"
    assert outcome.attempts == 1
    assert len(receiver.hits(path)) == 1


async def test_4xx_fails_at_once_with_status_and_a_short_preview(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("status/400")
    await register(http, admin_headers(make_token, tenant), receiver.url(path), idempotent=True)
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "failed" and outcome.attempts == 1
    assert len(receiver.hits(path)) == 1
    assert outcome.error is not None
    assert "HTTP 400: refused: xxx" in outcome.error
    assert len(outcome.error) < 400  # a preview, not the 500-character body


async def test_redirects_are_not_followed(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("redirect")
    await register(http, admin_headers(make_token, tenant), receiver.url(path))
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "failed"
    assert "HTTP 302" in outcome.content and "not followed" in outcome.content


async def test_timeout_of_a_non_idempotent_tool_is_unknown_and_not_retried(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("slow")
    await register(http, admin_headers(make_token, tenant), receiver.url(path), timeout_seconds=0.5)
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "unknown"
    assert outcome.attempts == 1
    assert "timed out after 0.5s" in outcome.content
    assert len(receiver.hits(path)) == 1


async def test_connection_refused_is_transient(
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    await register(http, admin_headers(make_token, tenant), url, idempotent=True)
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "failed" and outcome.attempts == 3
    assert "cannot connect" in outcome.content


async def test_host_name_is_kept_while_the_checked_address_is_dialled(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    # `localhost` passes because its address is allow-listed; the request goes to that
    # address but still names the registered host.
    path = unique("echo")
    created = await register(
        http, admin_headers(make_token, tenant), receiver.url(path, host="localhost")
    )
    assert created.status_code == 201, created.text
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"})
    assert outcome.status == "succeeded", outcome.content
    [request] = receiver.hits(path)
    assert request.headers["host"] == f"localhost:{receiver.port}"


async def test_url_is_checked_again_at_call_time(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
) -> None:
    path = unique("echo")
    created = await register(http, admin_headers(make_token, tenant), receiver.url(path))
    assert created.status_code == 201, created.text
    # The allowlist no longer opens loopback when the call runs: refused, nothing sent.
    outcome, _ = await run_tool(tools_app[0], tenant, {"title": "t"}, allowlist=[])
    assert outcome.status == "failed"
    assert "127.0.0.1" in outcome.content and "loopback" in outcome.content
    assert receiver.hits(path) == []


async def test_https_dials_the_checked_address_but_verifies_the_host_name(
    http: httpx.AsyncClient,
    tools_app: tuple[AppContext, Any],
    tenant: str,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    # The certificate names `localhost` only. Dialled at 127.0.0.1, the TLS handshake still
    # checks `localhost` (SNI and verification); the same server as `https://127.0.0.1`
    # fails verification, which shows verification is really on.
    certificate = self_signed_certificate(tmp_path, "localhost")
    trust = ssl.create_default_context(cafile=str(certificate.cert_file))
    admin = admin_headers(make_token, tenant)
    tls = {"ssl_certfile": str(certificate.cert_file), "ssl_keyfile": str(certificate.key_file)}
    async with serving(Receiver(), **tls) as tls_receiver:
        by_name = tls_receiver.url("/echo/tls", host="localhost").replace("http:", "https:")
        by_address = tls_receiver.url("/echo/ip").replace("http:", "https:")
        for name, url in (("by_name", by_name), ("by_address", by_address)):
            created = await register(http, admin, url, name=name, idempotent=True)
            assert created.status_code == 201, created.text
        results: dict[str, ToolOutcome] = {}
        for name in ("by_name", "by_address"):
            spec = await load_spec(tools_app[0], tenant, name, tls_verify=trust)
            spec = dataclasses.replace(spec, retry=RetryPolicy(max_attempts=1))
            results[name] = await execute(spec, {"title": "t"}, tool_context(tools_app[0], tenant))
        assert results["by_name"].status == "succeeded", results["by_name"].content
        assert results["by_name"].result == {"echo": {"title": "t"}}
        [request] = tls_receiver.hits("/echo/tls")
        assert request.headers["host"] == f"localhost:{tls_receiver.port}"
        assert results["by_address"].status == "failed"
        assert "CERTIFICATE_VERIFY_FAILED" in results["by_address"].content
        assert tls_receiver.hits("/echo/ip") == []


# Registration, listing and reading over the API.


async def test_reregistering_replaces_the_tool_and_views_hide_the_secret(
    receiver: Receiver, http: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    admin = admin_headers(make_token, tenant)
    first = await register(http, admin, receiver.url("/echo/a"), secret_ref="env:TICKET_KEY")
    second = await register(
        http,
        admin,
        receiver.url("/echo/b"),
        description="Open a ticket, v2.",
        idempotent=True,
        side_effect="read",
        compensation="close_ticket",
        trusted=True,
        timeout_seconds=12.5,
    )
    assert first.status_code == second.status_code == 201
    assert first.json()["tool_id"] == second.json()["tool_id"]
    view = (await http.get("/v1/tools/create_ticket", headers=admin)).json()
    assert view == second.json()
    assert view["url"].endswith("/echo/b")
    assert (view["description"], view["idempotent"], view["side_effect"]) == (
        "Open a ticket, v2.",
        True,
        "read",
    )
    assert (view["compensation"], view["trusted"], view["timeout_seconds"]) == (
        "close_ticket",
        True,
        12.5,
    )
    assert view["builtin"] is False and view["has_secret"] is False
    assert "TICKET_KEY" not in first.text and "secret_ref" not in first.json()


async def test_list_shows_builtins_first_then_the_tenants_tools(
    receiver: Receiver, http: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    await register(http, admin_headers(make_token, tenant), receiver.url("/echo/x"))
    client = bearer(make_token(tenant, roles=("client",)))
    listed = await http.get("/v1/tools", headers=client)
    assert listed.status_code == 200
    body = listed.json()
    assert body["next_cursor"] is None
    flags = [tool["builtin"] for tool in body["items"]]
    assert flags == sorted(flags, reverse=True)  # every built-in before any HTTP tool
    assert {"lookup_order", "refund_order"} <= {tool["name"] for tool in body["items"]}
    assert [tool["name"] for tool in body["items"] if not tool["builtin"]] == ["create_ticket"]
    builtin = (await http.get("/v1/tools/lookup_order", headers=client)).json()
    assert builtin["builtin"] is True and builtin["url"] is None
    other = bearer(make_token(tenant + "-other", roles=("admin",)))
    other_names = [
        tool["name"] for tool in (await http.get("/v1/tools", headers=other)).json()["items"]
    ]
    assert "create_ticket" not in other_names


async def test_another_tenants_tool_is_404(
    receiver: Receiver, http: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    await register(http, admin_headers(make_token, tenant), receiver.url("/echo/x"))
    other = bearer(make_token(tenant + "-other", roles=("admin",)))
    response = await http.get("/v1/tools/create_ticket", headers=other)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert (await http.get("/v1/tools/no_such_tool", headers=other)).status_code == 404


async def test_non_admin_cannot_register(
    receiver: Receiver, http: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    for roles in (("client",), ("reviewer",)):
        response = await register(
            http, bearer(make_token(tenant, roles=roles)), receiver.url("/echo/x")
        )
        assert response.status_code == 403, response.text
    no_token = await register(http, {}, receiver.url("/echo/x"))
    assert no_token.status_code == 401


async def test_builtin_name_is_a_409(
    receiver: Receiver, http: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    response = await register(
        http, admin_headers(make_token, tenant), receiver.url("/echo/x"), name="refund_order"
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"surprise": True}, "surprise"),
        ({"name": "Bad-Name"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"description": ""}, "description"),
        ({"input_schema": {"type": "array"}}, "input_schema"),
        (
            {"input_schema": {"type": "object", "properties": {"a": {"type": "nope"}}}},
            "input_schema",
        ),
        ({"input_schema": {"type": "object", "required": "title"}}, "input_schema"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 121}, "timeout_seconds"),
        ({"side_effect": "explosive"}, "side_effect"),
        ({"secret_ref": "vault:abc"}, "secret_ref"),
        ({"compensation": "Not A Tool"}, "compensation"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    receiver: Receiver,
    http: httpx.AsyncClient,
    tenant: str,
    make_token: TokenFactory,
    fields: dict[str, Any],
    field: str,
) -> None:
    response = await register(
        http, admin_headers(make_token, tenant), receiver.url("/echo/x"), **fields
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in {error["field"] for error in response.json()["errors"]}
