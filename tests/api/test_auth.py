"""JWT authentication: every negative case is a 401 that writes nothing; a wrong role is 403."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import HMACAlgorithm
from sqlalchemy import select

from app.api.auth import TokenVerifier
from app.api.context import AppContext
from app.api.deps import AdminPrincipal, api_router
from app.errors import Unauthorized
from app.main import create_app
from app.settings import AuthSettings
from app.tenants.models import Tenant
from tests.conftest import TEST_JWT_SECRET, TokenFactory, bearer, client_for, make_settings

_DROP = object()


def _claims(tenant_id: str, **overrides: Any) -> dict[str, Any]:
    """Valid claims for `tenant_id`; an override of `_DROP` removes that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice", "tenant": tenant_id, "roles": ["client"], "iat": now, "exp": now + 600,
    }  # fmt: skip
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not _DROP}


_admin_router = api_router()


@_admin_router.get("/test-only/admin")
async def _admin_only(principal: AdminPrincipal) -> dict[str, str]:
    return {"sub": principal.sub}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
RSA_PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


async def _tenant_exists(context: AppContext, tenant: str) -> bool:
    async with context.session_factory() as db:
        return (
            await db.execute(select(Tenant).where(Tenant.tenant_id == tenant))
        ).first() is not None


def _hs(claims: dict[str, Any], key: str = TEST_JWT_SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


NEGATIVE_CASES = {
    "alg none": lambda t: _unsigned(_claims(t)),
    "wrong key": lambda t: _hs(_claims(t), "another-secret-another-secret-another-secret!"),
    "expired": lambda t: _hs(_claims(t, exp=int(time.time()) - 3600)),
    "not yet valid": lambda t: _hs(_claims(t, nbf=int(time.time()) + 3600)),
    "missing exp": lambda t: _hs(_claims(t, exp=_DROP)),
    "string exp": lambda t: _hs(_claims(t, exp=str(int(time.time()) + 600))),
    "missing tenant": lambda t: _hs(_claims(t, tenant=_DROP)),
    "tenant not a string": lambda t: _hs(_claims(t, tenant=["a", "b"])),
    "roles not a list": lambda t: _hs(_claims(t, roles="admin")),
    "unknown role": lambda t: _hs(_claims(t, roles=["superuser"])),
    "tampered signature": lambda t: _hs(_claims(t))[:-4] + "AAAA",
    "tampered payload": lambda t: ".".join(
        [
            _hs(_claims(t)).split(".")[0],
            _b64(json.dumps(_claims(t, roles=["admin"])).encode()),
            _hs(_claims(t)).split(".")[2],
        ]
    ),
    "oversized": lambda t: _hs(_claims(t, padding="x" * 9000)),
    "garbage": lambda t: "not-a-jwt",
    "RS256 token to an HS256 service": lambda t: jwt.encode(
        _claims(t), RSA_PRIVATE_PEM, algorithm="RS256"
    ),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE_CASES))
async def test_bad_tokens_are_401_and_write_nothing(
    case: str, client: httpx.AsyncClient, context: AppContext, tenant: str
) -> None:
    response = await client.get("/v1/me", headers=bearer(NEGATIVE_CASES[case](tenant)))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert "Bearer" in response.headers["www-authenticate"]
    assert not await _tenant_exists(context, tenant)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer "}],
    ids=["no header", "basic auth", "empty bearer"],
)
async def test_missing_token_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


async def test_valid_token_returns_principal_and_creates_tenant(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    token = make_token(tenant, sub="bob", roles=("client", "reviewer"))
    response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"sub": "bob", "tenant": tenant, "roles": ["client", "reviewer"]}
    assert await _tenant_exists(context, tenant)


async def test_issuer_and_audience_are_checked_when_configured(
    context_factory: Any, tenant: str
) -> None:
    settings = make_settings(
        auth=AuthSettings(jwt_secret=TEST_JWT_SECRET, issuer="https://idp.example", audience="ap")
    )
    app = create_app(settings, context=context_factory(settings))
    async with client_for(app) as http:
        good = _hs(_claims(tenant, iss="https://idp.example", aud="ap"))
        assert (await http.get("/v1/me", headers=bearer(good))).status_code == 200
        for bad in (
            _hs(_claims(tenant, iss="https://evil.example", aud="ap")),
            _hs(_claims(tenant, iss="https://idp.example", aud="other")),
            _hs(_claims(tenant)),  # neither claim
        ):
            assert (await http.get("/v1/me", headers=bearer(bad))).status_code == 401


async def test_rs256_accepts_its_key_and_refuses_hs256_key_confusion(
    context_factory: Any, tenant: str
) -> None:
    settings = make_settings(
        auth=AuthSettings(jwt_algorithm="RS256", jwt_public_key=RSA_PUBLIC_PEM)
    )
    app = create_app(settings, context=context_factory(settings))
    async with client_for(app) as http:
        good = jwt.encode(_claims(tenant), RSA_PRIVATE_PEM, algorithm="RS256")
        assert (await http.get("/v1/me", headers=bearer(good))).status_code == 200
        # The classic confusion attack: HS256 signed with the public key as the secret.
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(_claims(tenant)).encode())
        import hashlib
        import hmac

        signature = _b64(
            hmac.new(
                RSA_PUBLIC_PEM.encode(), f"{header}.{payload}".encode(), hashlib.sha256
            ).digest()
        )
        forged = f"{header}.{payload}.{signature}"
        response = await http.get("/v1/me", headers=bearer(forged))
        assert response.status_code == 401


async def test_wrong_role_is_403(
    client: httpx.AsyncClient, app: Any, tenant: str, make_token: TokenFactory
) -> None:
    app.include_router(_admin_router)
    client_token = make_token(tenant, roles=("client",))
    admin_token = make_token(tenant, roles=("admin",))
    denied = await client.get("/test-only/admin", headers=bearer(client_token))
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    assert (await client.get("/test-only/admin", headers=bearer(admin_token))).status_code == 200


# -- the verifier's fast path ------------------------------------------------------------------


def test_a_remembered_token_is_refused_once_it_expires(tenant: str) -> None:
    verifier = TokenVerifier(AuthSettings(jwt_secret=TEST_JWT_SECRET, leeway_seconds=0))
    token = _hs(_claims(tenant, exp=time.time() + 1.0))
    assert verifier.verify(token).tenant == tenant
    assert verifier.verify(token).tenant == tenant  # remembered
    time.sleep(
        max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"] - time.time())
    )
    with pytest.raises(Unauthorized, match="token expired"):
        verifier.verify(token)


def test_a_token_is_only_remembered_if_it_verified(tenant: str) -> None:
    verifier = TokenVerifier(AuthSettings(jwt_secret=TEST_JWT_SECRET))
    forged = _hs(_claims(tenant), "another-secret-another-secret-another-secret!")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="token signature invalid"):
            verifier.verify(forged)
    # A token with the same claims, properly signed, is its own entry.
    assert verifier.verify(_hs(_claims(tenant))).tenant == tenant


def test_the_hs256_secret_is_checked_once_not_per_token(
    tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = {sub: _hs(_claims(tenant, sub=sub)) for sub in ("a", "b", "c")}
    prepared: list[object] = []
    original = HMACAlgorithm.prepare_key

    def counting(self: HMACAlgorithm, key: str | bytes) -> bytes:
        prepared.append(key)
        return original(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counting)
    verifier = TokenVerifier(AuthSettings(jwt_secret=TEST_JWT_SECRET))
    assert len(prepared) == 1
    # Distinct tokens (not remembered ones): each is verified in full, the key is not redone.
    for sub, token in tokens.items():
        assert verifier.verify(token).sub == sub
    assert len(prepared) == 1
