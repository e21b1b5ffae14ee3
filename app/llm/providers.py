"""Which model answers an agent: resolves a definition's `model` to a `Model`."""

from __future__ import annotations

from app.agents.schemas import AgentDefinition
from app.llm.model import Model, ModelUnavailable
from app.llm.offline import OfflineModel


class ModelResolver:
    """`offline` → the agent's scripted model; other names → registered models (tests
    register FunctionModels; the gateway issue registers the Anthropic provider)."""

    def __init__(self) -> None:
        self._models: dict[str, Model] = {}

    def register(self, name: str, model: Model) -> None:
        self._models[name] = model

    def resolve(self, definition: AgentDefinition) -> Model:
        if definition.model == "offline":
            return OfflineModel(definition.offline)
        model = self._models.get(definition.model)
        if model is None:
            raise ModelUnavailable(
                f"no provider for model `{definition.model}` is configured on this worker"
            )
        return model
