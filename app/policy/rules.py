"""The `policy` field of an agent definition (API.md "Agents"): ordered rules, a default,
read-only mode and blast-radius limits.

A pattern that does not compile, an unknown key, a constraint that can never hold (`min` >
`max`, `pattern` beside a numeric bound) or an empty constraint is a validation error
located at its field. Patterns are compiled once per policy object, on first evaluation
(`PolicySpec.compiled`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

MAX_PATTERN_LENGTH = 512
MAX_REMEMBERED_TOOLS = 1024
# Amount limits are kept as integer micro-units in Redis, exact up to 2**53.
MAX_AMOUNT_TOTAL = 1_000_000_000


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Number = StrictInt | FiniteFloat
Scalar = StrictStr | StrictInt | FiniteFloat | StrictBool
Refusal = Literal["deny", "require_approval"]


def _unset(value: object) -> bool:
    return value is None


def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc


class Constraint(BaseModel):
    """What one argument must satisfy; every key given must hold. A constraint on an
    argument the call leaves out never holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    min: Number | None = Field(default=None, exclude_if=_unset, description="Number ≥ min")
    max: Number | None = Field(default=None, exclude_if=_unset, description="Number ≤ max")
    pattern: str | None = Field(
        default=None,
        max_length=MAX_PATTERN_LENGTH,
        exclude_if=_unset,
        description="A string the regular expression matches in full",
    )
    equals: Scalar | None = Field(
        default=None, exclude_if=_unset, description="Equal, of the same JSON type"
    )
    in_: list[Scalar] | None = Field(
        default=None,
        alias="in",
        min_length=1,
        max_length=1000,
        exclude_if=_unset,
        description="Equal to one of these",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            _compiled(pattern)
        return pattern

    @model_validator(mode="after")
    def _can_hold(self) -> Constraint:
        if all(
            value is None for value in (self.min, self.max, self.pattern, self.equals, self.in_)
        ):
            raise ValueError("a constraint needs at least one of min, max, pattern, equals, in")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.pattern is not None and (self.min is not None or self.max is not None):
            raise ValueError("`pattern` (strings) and `min`/`max` (numbers) can never both hold")
        return self

    def compiled(self, argument: str) -> CompiledConstraint:
        return CompiledConstraint(
            argument,
            self.min,
            self.max,
            self.pattern,
            _compiled(self.pattern) if self.pattern is not None else None,
            self.equals,
            tuple(self.in_) if self.in_ is not None else None,
        )


@dataclass(frozen=True, slots=True)
class CompiledConstraint:
    """A constraint ready to check: plain attributes, its pattern compiled."""

    argument: str
    min: int | float | None
    max: int | float | None
    pattern: str | None
    regex: re.Pattern[str] | None
    equals: str | int | float | bool | None
    in_: tuple[str | int | float | bool, ...] | None


class Rule(BaseModel):
    """Calls of the tools `tool` matches (in full) whose arguments meet `when` get `decision`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(
        min_length=1,
        max_length=MAX_PATTERN_LENGTH,
        description="Regular expression the whole tool name must match",
    )
    when: dict[str, Constraint] = Field(
        default_factory=dict, max_length=64, description="Argument name → constraint"
    )
    decision: Decision
    priority: int = Field(
        default=100, ge=0, le=1_000_000, description="Lower first; ties keep list order"
    )
    reason: str | None = Field(default=None, max_length=1000, exclude_if=_unset)

    @field_validator("tool")
    @classmethod
    def _tool_compiles(cls, pattern: str) -> str:
        _compiled(pattern)
        return pattern


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to evaluate: its index in `rules`, patterns compiled."""

    index: int
    rule: Rule
    tool: re.Pattern[str]
    when: tuple[CompiledConstraint, ...]


class LimitScope(StrEnum):
    """Whose calls a limit adds up: one session's, one subject's (the caller the session
    runs for), or the whole tenant's."""

    SESSION = "session"
    SUBJECT = "subject"
    TENANT = "tenant"


class Limit(BaseModel):
    """A blast-radius limit over a sliding window, shared by every worker: either a number of
    calls (`max_calls`) or a total of one numeric argument (`sum_argument` ≤ `max_total`).
    All tools `tool` matches count together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(min_length=1, max_length=MAX_PATTERN_LENGTH)
    max_calls: int | None = Field(default=None, ge=1, le=1_000_000, exclude_if=_unset)
    sum_argument: str | None = Field(default=None, min_length=1, max_length=128, exclude_if=_unset)
    max_total: Number | None = Field(default=None, gt=0, le=MAX_AMOUNT_TOTAL, exclude_if=_unset)
    window_seconds: int = Field(ge=1, le=30 * 24 * 3600)
    per: LimitScope = LimitScope.TENANT
    over_limit: Refusal = Field(default="deny", description="The decision past the limit")

    @field_validator("tool")
    @classmethod
    def _tool_compiles(cls, pattern: str) -> str:
        _compiled(pattern)
        return pattern

    @model_validator(mode="after")
    def _one_kind(self) -> Limit:
        counts_calls = self.max_calls is not None
        sums = self.sum_argument is not None or self.max_total is not None
        if counts_calls == sums:
            raise ValueError("a limit has either `max_calls`, or `sum_argument` and `max_total`")
        if sums and (self.sum_argument is None or self.max_total is None):
            raise ValueError("an amount limit needs both `sum_argument` and `max_total`")
        return self


class PolicySpec(BaseModel):
    """An agent's policy. With no rule matching, `default` decides: a new tool is unusable
    until a rule allows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list, max_length=500)
    default: Refusal = Field(default="deny", description="When no rule matches (never allow)")
    read_only: bool = Field(default=False, description="Deny every write or destructive tool")
    limits: list[Limit] = Field(default_factory=list, max_length=50)

    @cached_property
    def compiled(self) -> CompiledPolicy:
        """The policy ready to evaluate, built on first use. (A cached property, not a
        private attribute: pydantic leaves it out of equality and dumps, and reads it fast.)"""
        return CompiledPolicy(self)

    def ordered_rules(self) -> tuple[CompiledRule, ...]:
        """The rules in evaluation order: priority, then list order."""
        return self.compiled.ordered

    def limits_for(self, tool_name: str) -> list[tuple[int, Limit]]:
        """(index in `limits`, limit) of the limits that count calls of `tool_name`."""
        return self.compiled.limits_for(tool_name)


class CompiledPolicy:
    """A policy's rules in evaluation order with their patterns compiled, and the rules
    that apply to each tool name seen so far."""

    __slots__ = ("_by_tool", "_limits", "ordered")

    def __init__(self, policy: PolicySpec) -> None:
        compiled = [
            CompiledRule(
                index,
                rule,
                _compiled(rule.tool),
                tuple(constraint.compiled(name) for name, constraint in rule.when.items()),
            )
            for index, rule in enumerate(policy.rules)
        ]
        # sorted() is stable, so rules of equal priority keep their list order.
        self.ordered = tuple(sorted(compiled, key=lambda rule: rule.rule.priority))
        self._limits = tuple(
            (index, limit, _compiled(limit.tool)) for index, limit in enumerate(policy.limits)
        )
        self._by_tool: dict[str, tuple[CompiledRule, ...]] = {}

    def rules_for(self, tool_name: str) -> tuple[CompiledRule, ...]:
        """The rules whose pattern matches the whole of `tool_name`, in evaluation order;
        remembered for up to MAX_REMEMBERED_TOOLS names (they come from models)."""
        rules = self._by_tool.get(tool_name)
        if rules is None:
            rules = tuple(rule for rule in self.ordered if rule.tool.fullmatch(tool_name))
            if len(self._by_tool) < MAX_REMEMBERED_TOOLS:
                self._by_tool[tool_name] = rules
        return rules

    def limits_for(self, tool_name: str) -> list[tuple[int, Limit]]:
        return [(index, limit) for index, limit, tool in self._limits if tool.fullmatch(tool_name)]
