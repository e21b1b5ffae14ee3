"""JWT bearer authentication (PyJWT).

HS256 with a shared secret, or RS256 with a PEM public key or a JWKS URL — exactly one
algorithm is accepted, so an HS256 token signed with the RS256 public key as its secret
(key confusion) and `alg: none` are both refused. `exp` is required, `nbf`/`iat` honoured
with a small leeway, `iss`/`aud` checked when configured, the token's size capped and the
platform claims type-checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from jwt import PyJWKClient
from jwt.algorithms import HMACAlgorithm

from app.errors import Unauthorized
from app.settings import AuthSettings


class Role(StrEnum):
    CLIENT = "client"
    REVIEWER = "reviewer"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject, tenant and roles."""

    sub: str
    tenant: str
    roles: frozenset[Role]

    def has_role(self, role: Role) -> bool:
        return role in self.roles


MAX_CLAIM_LENGTH = 128


class _PreparedHS256(HMACAlgorithm):
    """HS256 with its one key checked once, at start-up: PyJWT's `prepare_key` (which
    refuses empty, PEM/SSH/DER- and JWK-shaped secrets by trying to parse them) otherwise
    runs on every token, and costs more than the HMAC itself. Any other key is prepared as
    usual."""

    def __init__(self, secret: str) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self.key = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        return self.key if key is self.key else super().prepare_key(key)


class TokenVerifier:
    """Verifies bearer tokens. A token that verified is remembered (the exact token string,
    at most `VERIFIED_CACHE_SIZE` of them, for at most `VERIFIED_CACHE_SECONDS`): clients send
    the same token request after request, and PyJWT's decode is the costliest step of an
    authenticated request. A remembered token is still refused once its `exp` (with leeway)
    has passed, by the full verification and its usual error; `nbf`/`iat` can only become
    more valid with time. Not used with a JWKS URL, whose keys may rotate out."""

    VERIFIED_CACHE_SIZE = 4096
    VERIFIED_CACHE_SECONDS = 60.0

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        # token -> (principal, valid until: min(exp + leeway, verified + cache seconds))
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._jwks = PyJWKClient(settings.jwks_url, cache_keys=True) if settings.jwks_url else None
        # A decoder of our own (not PyJWT's module-level one), so registering the
        # prepared HS256 changes nothing elsewhere in the process.
        self._decoder = jwt.PyJWT()
        self._hs256: _PreparedHS256 | None = None
        if settings.jwt_algorithm == "HS256":
            self._hs256 = _PreparedHS256(settings.jwt_secret.get_secret_value())
            # PyJWT has no public hook for this: its signature layer is `PyJWT._jws`.
            self._decoder._jws.unregister_algorithm("HS256")
            self._decoder._jws.register_algorithm("HS256", self._hs256)

    @property
    def needs_network(self) -> bool:
        """JWKS key look-ups may fetch over HTTP: run `verify` off the event loop then."""
        return self._jwks is not None

    def _key(self, token: str) -> Any:
        if self._hs256 is not None:
            return self._hs256.key
        if self._jwks is not None:
            return self._jwks.get_signing_key_from_jwt(token).key
        return self.settings.jwt_public_key

    def verify(self, token: str) -> Principal:
        if len(token.encode()) > self.settings.max_token_bytes:
            raise Unauthorized(f"token larger than {self.settings.max_token_bytes} bytes")
        remembered = self._verified.get(token)
        now = time.time()
        if remembered is not None:
            if now < remembered[1]:
                return remembered[0]
            del self._verified[token]
        claims = self._decode(token)
        principal = _principal_from_claims(claims)
        if self._jwks is None:
            if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            valid_until = min(
                float(claims["exp"]) + self.settings.leeway_seconds,
                now + self.VERIFIED_CACHE_SECONDS,
            )
            self._verified[token] = (principal, valid_until)
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims = self._decoder.decode(
                token,
                key=self._key(token),
                algorithms=[self.settings.jwt_algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={
                    "require": ["exp", "sub", "tenant"],
                    "verify_aud": self.settings.audience is not None,
                    "verify_iss": self.settings.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("token not valid yet") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the `{exc.claim}` claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("token audience not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("token issuer not accepted") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthorized("token algorithm not accepted") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("token signature invalid") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise Unauthorized(f"token invalid: {exc}") from exc
        return claims


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    # PyJWT accepts numeric strings for the time claims; RFC 7519 says NumericDate.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Unauthorized(f"`{name}` claim must be a number (seconds since the epoch)")
    sub, tenant, roles = claims.get("sub"), claims.get("tenant"), claims.get("roles", [])
    for name, value in (("sub", sub), ("tenant", tenant)):
        if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_LENGTH:
            raise Unauthorized(f"`{name}` claim must be a non-empty string ≤ {MAX_CLAIM_LENGTH}")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise Unauthorized("`roles` claim must be a list of strings")
    known = {role.value for role in Role}
    unknown = [role for role in roles if role not in known]
    if unknown:
        raise Unauthorized(f"`roles` claim has unknown roles: {', '.join(unknown)}")
    assert isinstance(sub, str) and isinstance(tenant, str)
    return Principal(sub=sub, tenant=tenant, roles=frozenset(Role(role) for role in roles))


def mint_token(
    settings: AuthSettings,
    *,
    tenant: str,
    sub: str,
    roles: list[str],
    ttl_seconds: int,
) -> str:
    """A signed token for development and tests (`agent-platform token`)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "tenant": tenant,
        "roles": roles,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    if settings.jwt_algorithm == "HS256":
        return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    if settings.jwt_private_key is None:
        raise ValueError("minting RS256 tokens needs AUTH_JWT_PRIVATE_KEY")
    return jwt.encode(claims, settings.jwt_private_key.get_secret_value(), algorithm="RS256")
