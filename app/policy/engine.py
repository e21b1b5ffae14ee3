"""Pure evaluation of a policy on one tool call: no I/O, no clock.

Run it on the arguments after schema validation — the values that will really run.
Guarantees:
- read-only mode denies every tool that is not `read`, whatever the rules say;
- rules are tried by priority, then list order; the first whose tool pattern matches the
  whole name and whose constraints all hold decides; with none, the policy's default
  (deny or require_approval — never allow);
- a constraint on an absent argument does not hold, so leaving an argument out never
  slips past a bound;
- numbers are ints, floats and Decimals, never bools nor numeric strings; NaN and ±inf
  meet no numeric bound; `pattern` matches whole strings only; `equals`/`in` compare
  within one JSON type (1 equals 1.0, never true nor "1").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from app.policy.decision import ConstraintCheck, ConstraintFailure, PolicyDecision
from app.policy.rules import CompiledConstraint, Decision, PolicySpec, Scalar
from app.tools.spec import SideEffect

_SHOWN_CHARS = 60
_ABSENT = object()


def evaluate(
    policy: PolicySpec,
    tool_name: str,
    side_effect: SideEffect | str,
    arguments: Mapping[str, Any],
) -> PolicyDecision:
    """The decision on calling `tool_name` with `arguments`; see the module docstring."""
    if policy.read_only and side_effect != SideEffect.READ:
        return PolicyDecision(
            Decision.DENY,
            tool_name,
            f"read-only mode: `{tool_name}` is a {side_effect} tool",
            read_only=True,
        )
    failures: list[ConstraintFailure] = []
    for compiled in policy.compiled.rules_for(tool_name):
        failure = _first_failure(compiled.index, compiled.when, arguments)
        if failure is not None:
            failures.append(failure)
            continue
        rule = compiled.rule
        return PolicyDecision(
            rule.decision,
            tool_name,
            rule.reason or f"rule {compiled.index} (`{rule.tool}`, priority {rule.priority})",
            rule_index=compiled.index,
            rule_priority=rule.priority,
            failures=tuple(failures),
        )
    default = Decision(policy.default)
    return PolicyDecision(
        default,
        tool_name,
        f"no rule matches `{tool_name}` with these arguments: default {default.value}",
        failures=tuple(failures),
    )


def _first_failure(
    rule_index: int, when: tuple[CompiledConstraint, ...], arguments: Mapping[str, Any]
) -> ConstraintFailure | None:
    for constraint in when:
        value = arguments.get(constraint.argument, _ABSENT)
        if value is _ABSENT:
            return ConstraintFailure(rule_index, constraint.argument, "absent", "argument absent")
        failed = check_constraint(constraint, value)
        if failed is not None:
            check, detail = failed
            return ConstraintFailure(rule_index, constraint.argument, check, detail)
    return None


def check_constraint(
    constraint: CompiledConstraint, value: Any
) -> tuple[ConstraintCheck, str] | None:
    """(the first check `value` fails, why), or None when every key of `constraint` holds."""
    if constraint.min is not None or constraint.max is not None:
        number = finite_number(value)
        if number is None:
            bound: ConstraintCheck = "min" if constraint.min is not None else "max"
            return bound, f"{_show(value)} is not a finite number"
        if constraint.min is not None and number < constraint.min:
            return "min", f"{_show(value)} < min {constraint.min}"
        if constraint.max is not None and number > constraint.max:
            return "max", f"{_show(value)} > max {constraint.max}"
    if constraint.regex is not None and not _full_match(constraint.regex, value):
        return "pattern", f"{_show(value)} does not match {constraint.pattern!r} in full"
    if constraint.equals is not None and not same_value(value, constraint.equals):
        return "equals", f"{_show(value)} is not {constraint.equals!r}"
    if constraint.in_ is not None and not any(same_value(value, v) for v in constraint.in_):
        return "in", f"{_show(value)} is not one of the {len(constraint.in_)} allowed values"
    return None


def finite_number(value: Any) -> int | float | Decimal | None:
    """`value` if it is a finite number (bools and strings are not numbers), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    return None


def same_value(value: Any, expected: Scalar) -> bool:
    """JSON equality within one type: bool with bool, number with number, string with string."""
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool) and value is expected
    if isinstance(expected, str) or isinstance(value, str):
        return isinstance(expected, str) and isinstance(value, str) and value == expected
    number = finite_number(value)
    return number is not None and number == expected


def _full_match(regex: re.Pattern[str], value: Any) -> bool:
    return isinstance(value, str) and regex.fullmatch(value) is not None


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 1] + "…"
