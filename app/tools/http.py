"""HTTP tools: a URL a tenant registered, called with the validated arguments.

Each call POSTs the arguments as JSON with an `Idempotency-Key` (the call's key, stable
across retries and crash recovery) and, when the tool has a secret, a signature the
receiver checks: `X-Agent-Platform-Signature: v1=<hex HMAC-SHA256 of "timestamp.body">`
over the exact bytes sent, with the time in `X-Agent-Platform-Timestamp`.

Guarantees: the URL is checked again by the outbound guard at every call and the request
goes to one of the checked addresses (TLS still verifies the registered host name);
redirects are not followed; the secret is read at call time (so it can be rotated without a
restart) and never appears in an error; the response is read up to `MAX_RESPONSE_BYTES`.
The timeout and retries are the executor's: 408, 429, 5xx and connection failures raise
`TransientToolError`, which it retries for idempotent tools only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import ssl
import time
from collections.abc import Iterable
from typing import Any

import anyio
import httpx

from app.settings import get_settings
from app.tools import outbound
from app.tools.models import ToolDefinition
from app.tools.spec import (
    Executor,
    SideEffect,
    ToolContext,
    ToolOutcomeUnknown,
    ToolSpec,
    TransientToolError,
)

SIGNATURE_HEADER = "X-Agent-Platform-Signature"
TIMESTAMP_HEADER = "X-Agent-Platform-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_RESPONSE_BYTES = 1024 * 1024
ERROR_PREVIEW_CHARS = 200
USER_AGENT = "agent-platform-tools/1"


class HttpToolError(Exception):
    """The tool's endpoint refused the call for good (a 4xx other than 408/429, a redirect,
    an oversized response). The message has the status and a short body preview."""


class ToolSecretUnavailable(Exception):
    """The tool's `secret_ref` could not be resolved; names the reference, never a value."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp` (receivers recompute it)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


async def resolve_secret(secret_ref: str) -> str:
    """The secret `secret_ref` points at: `env:NAME` or `file:/path` (contents, stripped)."""
    kind, _, where = secret_ref.partition(":")
    if kind == "env":
        value = os.environ.get(where, "")
    elif kind == "file":
        try:
            value = await anyio.Path(where).read_text()
        except (OSError, UnicodeError) as exc:
            raise ToolSecretUnavailable(
                f"secret file {where} cannot be read ({type(exc).__name__})"
            ) from None
    else:
        raise ToolSecretUnavailable(f"secret reference kind {kind!r} is not env or file")
    value = value.strip()
    if not value:
        raise ToolSecretUnavailable(f"secret {secret_ref} is empty or not set")
    return value


def _preview(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if len(text) > ERROR_PREVIEW_CHARS:
        text = text[:ERROR_PREVIEW_CHARS] + "…"
    return text or "(empty body)"


def _decode(body: bytes) -> Any:
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _read_capped(response: httpx.Response, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise HttpToolError(
                f"{name} answered {response.status_code} with more than "
                f"{MAX_RESPONSE_BYTES} bytes; the response was discarded"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _interpret(name: str, status: int, body: bytes) -> Any:
    if 200 <= status < 300:
        return _decode(body)
    message = f"{name} answered HTTP {status}: {_preview(body)}"
    if status in (408, 429) or status >= 500:
        raise TransientToolError(message)
    if 300 <= status < 400:
        raise HttpToolError(message + " (redirects are not followed)")
    raise HttpToolError(message)


async def _headers(
    target: outbound.ResolvedTarget, body: bytes, secret_ref: str | None, idempotency_key: str
) -> dict[str, str]:
    timestamp = str(int(time.time()))
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: idempotency_key,
        TIMESTAMP_HEADER: timestamp,
    }
    if secret_ref is not None:
        headers[SIGNATURE_HEADER] = sign(await resolve_secret(secret_ref), timestamp, body)
    return headers


async def post_to_checked_target(
    client: httpx.AsyncClient,
    name: str,
    target: outbound.ResolvedTarget,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, bytes]:
    """POST to the first checked address that accepts a connection: status and body."""
    for index, address in enumerate(target.addresses):
        request = client.build_request(
            "POST",
            target.url_for(address),
            content=body,
            headers=headers,
            extensions={"sni_hostname": target.host},
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            # Nothing was sent: trying the next checked address is always safe.
            if index + 1 < len(target.addresses):
                continue
            raise TransientToolError(
                f"{name}: cannot connect to {target.host}: {type(exc).__name__}: {exc}"
            ) from None
        except httpx.TransportError as exc:
            # The request may have reached the tool before the connection failed.
            raise ToolOutcomeUnknown(
                f"{name}: request to {target.host} failed: {type(exc).__name__}: {exc}"
            ) from None
        try:
            return response.status_code, await _read_capped(response, name)
        except httpx.TransportError as exc:
            raise ToolOutcomeUnknown(
                f"{name}: reading the answer of {target.host} failed: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            await response.aclose()
    raise AssertionError("a resolved target has at least one address")


def http_executor(
    name: str,
    url: str,
    secret_ref: str | None,
    allowlist: Iterable[str] | None = None,
    *,
    tls_verify: ssl.SSLContext | None = None,
) -> Executor:
    """The executor of an HTTP tool. `allowlist` None → `OUTBOUND_ALLOWLIST` at call time;
    `tls_verify` None → the default CA bundle (a context trusts a private CA instead)."""
    fixed_allowlist = None if allowlist is None else tuple(allowlist)

    async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
        allowed = get_settings().outbound_allowlist if fixed_allowlist is None else fixed_allowlist
        try:
            target = await outbound.resolve_and_check(url, allowed)
        except outbound.OutboundHostUnresolved as exc:
            raise TransientToolError(exc.detail) from None
        body = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False).encode()
        headers = await _headers(target, body, secret_ref, context.idempotency_key)
        credential = context.secrets.get("credential")
        if credential:  # the calling agent's own credential for this tool
            headers["Authorization"] = f"Bearer {credential}"
        # No client-side timeout: the executor owns the deadline, and a timeout it sees is
        # reported as "unknown" for a non-idempotent tool rather than as a plain failure.
        async with httpx.AsyncClient(
            timeout=None,
            follow_redirects=False,
            trust_env=False,
            verify=True if tls_verify is None else tls_verify,
        ) as client:
            status, payload = await post_to_checked_target(client, name, target, body, headers)
        return _interpret(name, status, payload)

    return call


def spec_from_definition(
    row: ToolDefinition,
    *,
    allowlist: Iterable[str] | None = None,
    tls_verify: ssl.SSLContext | None = None,
) -> ToolSpec:
    """The runnable spec of a registered HTTP tool (a snapshot of the row: the row itself is
    not kept). `allowlist` fixes the outbound allowlist (None: the settings', read per call);
    `tls_verify` trusts a private CA (None: the default bundle)."""
    definition = row.definition
    return ToolSpec(
        accepts_credential=True,
        name=row.name,
        description=str(definition["description"]),
        input_schema=dict(definition["input_schema"]),
        executor=http_executor(
            row.name, str(definition["url"]), row.secret_ref, allowlist, tls_verify=tls_verify
        ),
        input_model=None,
        timeout_seconds=float(definition.get("timeout_seconds", 30.0)),
        idempotent=bool(definition.get("idempotent", False)),
        side_effect=SideEffect(definition.get("side_effect", SideEffect.WRITE.value)),
        trusted=bool(definition.get("trusted", False)),
        compensation=definition.get("compensation"),
        builtin=False,
    )
