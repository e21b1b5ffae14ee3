"""Settings: every one is documented in .env.example; placeholder secrets are refused
outside development."""

from __future__ import annotations

import re

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from app.settings import AuthSettings, CredentialSettings, Environment, Settings
from tests.conftest import PROJECT_ROOT


def _env_names(model: type[BaseSettings], prefix: str = "") -> list[str]:
    names = []
    for field_name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names += _env_names(annotation, str(annotation.model_config.get("env_prefix", "")))
        else:
            names.append((prefix + field_name).upper())
    return names


def test_every_setting_is_documented_in_env_example() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (PROJECT_ROOT / ".env.example").read_text(), re.M)
    )
    missing = [name for name in _env_names(Settings) if name not in documented]
    assert missing == []


@pytest.mark.parametrize("environment", [Environment.PRODUCTION, Environment.TEST])
def test_placeholder_jwt_secret_is_refused_outside_development(environment: Environment) -> None:
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        Settings(environment=environment, auth=AuthSettings())
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        Settings(environment=environment, auth=AuthSettings(jwt_secret="short"))
    Settings(
        environment=environment,
        auth=AuthSettings(jwt_secret="x" * 40),
        credentials=CredentialSettings(encryption_key=Fernet.generate_key().decode()),
    )


def test_the_development_credentials_key_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="CREDENTIALS_ENCRYPTION_KEY"):
        Settings(environment=Environment.PRODUCTION, auth=AuthSettings(jwt_secret="x" * 40))
    Settings(environment=Environment.TEST, auth=AuthSettings(jwt_secret="x" * 40))


def test_development_accepts_the_placeholder() -> None:
    assert Settings(environment=Environment.DEVELOPMENT, auth=AuthSettings()).auth.jwt_secret


def test_rs256_needs_a_key_outside_development() -> None:
    with pytest.raises(ValidationError, match="RS256"):
        Settings(environment=Environment.PRODUCTION, auth=AuthSettings(jwt_algorithm="RS256"))


def test_outbound_allowlist_parses_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOUND_ALLOWLIST", "localhost, 10.0.0.0/8 ,127.0.0.1")
    assert Settings().outbound_allowlist == ["localhost", "10.0.0.0/8", "127.0.0.1"]
    monkeypatch.setenv("OUTBOUND_ALLOWLIST", "10.0.0.0/33")
    with pytest.raises(ValidationError):
        Settings()
