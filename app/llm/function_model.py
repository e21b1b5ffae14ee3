"""A model whose turns are a Python function — the test twin of a real provider.

Tests script it turn by turn: `FunctionModel(lambda request: ModelResponse(...))`, and read
`requests` afterwards to see exactly what the runtime sent.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from app.llm.model import ModelRequest, ModelResponse

TurnFunction = Callable[[ModelRequest], ModelResponse | Awaitable[ModelResponse]]


class FunctionModel:
    def __init__(self, turn: TurnFunction) -> None:
        self.turn = turn
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        response = self.turn(request)
        if inspect.isawaitable(response):
            return await response
        return response
