"""Imports every ORM model so `Base.metadata` is complete (for Alembic and `alembic check`)."""

from app.agents import models as agents_models
from app.api import models as api_models
from app.credentials import models as credentials_models
from app.db.base import Base
from app.hitl import models as hitl_models
from app.memory import models as memory_models
from app.observability import models as observability_models
from app.sessions import models as sessions_models
from app.tenants import models as tenants_models
from app.tools import demo_models
from app.tools import models as tools_models
from app.webhooks import models as webhooks_models

__all__ = [
    "Base",
    "agents_models",
    "api_models",
    "credentials_models",
    "demo_models",
    "hitl_models",
    "memory_models",
    "observability_models",
    "sessions_models",
    "tenants_models",
    "tools_models",
    "webhooks_models",
]
