"""Built-in tools registered in code: the demo support tools over the demo orders table.

`lookup_order` reads (idempotent); `refund_order` writes a refund row and is deliberately
NOT idempotent — each run issues another refund — so crash tests can count side effects.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from sqlalchemy import select

from app.db.ids import new_id
from app.tools.demo_models import DemoOrder, DemoRefund
from app.tools.spec import SideEffect, ToolContext, ToolSpec


class LookupOrderInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(min_length=1, max_length=32, description="The order id, e.g. ord_1001")


class RefundOrderInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(min_length=1, max_length=32)
    # Exact (Decimal) inside, a plain JSON number outside (policies compare it numerically).
    amount: Annotated[Decimal, PlainSerializer(float, when_used="json")] = Field(
        gt=0, le=100_000, decimal_places=2, description="USD to refund"
    )


async def lookup_order(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    async with context.session_factory() as db:
        order = (
            await db.execute(select(DemoOrder).where(DemoOrder.order_id == arguments["order_id"]))
        ).scalar_one_or_none()
    if order is None:
        return {"found": False, "order_id": arguments["order_id"]}
    return {
        "found": True,
        "order_id": order.order_id,
        "customer": order.customer,
        "item": order.item,
        "amount_usd": str(order.amount_usd),
        "status": order.status,
    }


async def refund_order(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    amount = Decimal(str(arguments["amount"]))
    async with context.session_factory.begin() as db:
        order = (
            await db.execute(select(DemoOrder).where(DemoOrder.order_id == arguments["order_id"]))
        ).scalar_one_or_none()
        if order is None:
            raise ValueError(f"order {arguments['order_id']} does not exist")
        if amount > order.amount_usd:
            raise ValueError(f"refund {amount} exceeds the order total {order.amount_usd}")
        refund_id = new_id("ref")
        db.add(
            DemoRefund(
                refund_id=refund_id,
                order_id=order.order_id,
                amount_usd=amount,
                tenant_id=context.tenant_id,
                session_id=context.session_id,
                tool_use_id=context.tool_use_id,
            )
        )
    return {"refund_id": refund_id, "order_id": arguments["order_id"], "amount_usd": str(amount)}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


class EscalateInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, description="Why a human should decide")


async def escalate_to_human(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    """Runs only once a reviewer approved the escalation (the `escalation` gate always fires
    for it): the agent may go on. A rejection reaches the model as an error with the
    reviewer's comment instead."""
    return {"escalated": True, "reviewer": "approved: go on", "reason": arguments["reason"]}


BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="escalate_to_human",
        description="Hand the decision to a human reviewer when the task is beyond you or out "
        "of scope. The session waits for the reviewer; their answer comes back as the result.",
        input_schema=_schema(EscalateInput),
        input_model=EscalateInput,
        executor=escalate_to_human,
        idempotent=True,
        side_effect=SideEffect.READ,
        trusted=True,
        timeout_seconds=5,
    ),
    ToolSpec(
        name="lookup_order",
        description="Look up a customer order by id: customer, item, amount and status.",
        input_schema=_schema(LookupOrderInput),
        input_model=LookupOrderInput,
        executor=lookup_order,
        idempotent=True,
        side_effect=SideEffect.READ,
        timeout_seconds=10,
    ),
    ToolSpec(
        name="refund_order",
        description="Refund part or all of an order. Issues real money back to the customer.",
        input_schema=_schema(RefundOrderInput),
        input_model=RefundOrderInput,
        executor=refund_order,
        idempotent=False,
        side_effect=SideEffect.WRITE,
        timeout_seconds=10,
    ),
)
