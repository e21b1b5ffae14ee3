"""The policy schema and its pure evaluation: table-driven per rule kind, plus property-based
fuzzing against an independent oracle (no call is allowed unless it meets every constraint
of the allow rule that matched)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.policy.decision import LimitBreach, LimitCheck
from app.policy.engine import check_constraint, evaluate
from app.policy.rules import Constraint, Decision, PolicySpec
from app.tools.spec import SideEffect

API_EXAMPLE: dict[str, Any] = {
    "rules": [
        {"tool": "refund_order", "when": {"amount": {"max": 100}}, "decision": "allow", "priority": 10},
        {"tool": "refund_order", "decision": "require_approval", "priority": 20,
         "reason": "refunds over $100 need a reviewer"},
        {"tool": "lookup_.*", "decision": "allow", "priority": 30},
    ],
    "default": "deny",
}  # fmt: skip

SUPPORT = PolicySpec.model_validate(API_EXAMPLE)


def _policy(*rules: dict[str, Any], **fields: Any) -> PolicySpec:
    return PolicySpec.model_validate({"rules": list(rules), **fields})


# --- the schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "loc"),
    [
        ({"rules": [{"tool": "refund_(", "decision": "allow"}]}, ("rules", 0, "tool")),
        (
            {"rules": [{"tool": "x", "decision": "allow", "when": {"a": {"pattern": "[z"}}}]},
            ("rules", 0, "when", "a", "pattern"),
        ),
        (
            {"rules": [{"tool": "x", "decision": "allow", "when": {"a": {"maximum": 5}}}]},
            ("rules", 0, "when", "a", "maximum"),
        ),
        (
            {"rules": [{"tool": "x", "decision": "allow", "when": {"a": {"min": 9, "max": 1}}}]},
            ("rules", 0, "when", "a"),
        ),
        (
            {"rules": [{"tool": "x", "decision": "allow", "when": {"a": {}}}]},
            ("rules", 0, "when", "a"),
        ),
        (
            {"rules": [{"tool": "x", "decision": "allow", "when": {"a": {"max": "100"}}}]},
            ("rules", 0, "when", "a", "max", "int"),
        ),
        (
            {"rules": [{"tool": "x", "decision": "allow", "when": {"a": {"pattern": "a", "max": 1}}}]},
            ("rules", 0, "when", "a"),
        ),
        ({"rules": [{"tool": "x", "decision": "maybe"}]}, ("rules", 0, "decision")),
        ({"rules": [{"tool": "x", "decision": "allow", "prio": 1}]}, ("rules", 0, "prio")),
        ({"default": "allow"}, ("default",)),
        ({"limits": [{"tool": "x", "window_seconds": 60}]}, ("limits", 0)),
        (
            {"limits": [{"tool": "x", "max_calls": 5, "sum_argument": "a", "max_total": 1,
                         "window_seconds": 60}]},
            ("limits", 0),
        ),
        (
            {"limits": [{"tool": "x", "sum_argument": "a", "window_seconds": 60}]},
            ("limits", 0),
        ),
        (
            {"limits": [{"tool": "x", "max_calls": 5, "window_seconds": 60, "per": "agent"}]},
            ("limits", 0, "per"),
        ),
        (
            {"limits": [{"tool": "*", "max_calls": 5, "window_seconds": 60}]},
            ("limits", 0, "tool"),
        ),
    ],
)  # fmt: skip
def test_an_invalid_policy_is_an_error_at_its_field(
    policy: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as raised:
        PolicySpec.model_validate(policy)
    assert loc in [tuple(error["loc"]) for error in raised.value.errors()]


def test_the_api_example_round_trips_unchanged() -> None:
    dumped = SUPPORT.model_dump(mode="json")
    assert dumped["rules"][0]["when"] == {"amount": {"max": 100}}
    assert PolicySpec.model_validate(dumped) == SUPPORT
    fresh = PolicySpec.model_validate(API_EXAMPLE)
    evaluate(SUPPORT, "lookup_order", SideEffect.READ, {})  # fills SUPPORT's per-tool cache
    assert fresh == SUPPORT and fresh.model_dump() == SUPPORT.model_dump()
    with_in = _policy({"tool": "x", "decision": "allow", "when": {"a": {"in": [1, "b"]}}})
    assert with_in.model_dump()["rules"][0]["when"] == {"a": {"in": [1, "b"]}}
    assert PolicySpec.model_validate_json(with_in.model_dump_json()) == with_in


# --- evaluation, table-driven ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "decision", "rule_index"),
    [
        ("refund_order", {"order_id": "ord_1", "amount": 40.0}, Decision.ALLOW, 0),
        ("refund_order", {"order_id": "ord_1", "amount": 100}, Decision.ALLOW, 0),
        ("refund_order", {"order_id": "ord_1", "amount": 100.01}, Decision.REQUIRE_APPROVAL, 1),
        ("refund_order", {"order_id": "ord_1"}, Decision.REQUIRE_APPROVAL, 1),  # absent
        ("refund_order", {"amount": "50"}, Decision.REQUIRE_APPROVAL, 1),  # a string
        ("refund_order", {"amount": True}, Decision.REQUIRE_APPROVAL, 1),  # a bool
        ("refund_order", {"amount": math.nan}, Decision.REQUIRE_APPROVAL, 1),
        ("refund_order", {"amount": -math.inf}, Decision.REQUIRE_APPROVAL, 1),
        ("refund_order", {"amount": None}, Decision.REQUIRE_APPROVAL, 1),
        ("refund_order", {"amount": Decimal("99.99")}, Decision.ALLOW, 0),
        ("lookup_order", {"order_id": "ord_1"}, Decision.ALLOW, 2),
        ("lookup_customer", {}, Decision.ALLOW, 2),
        ("xlookup_order", {}, Decision.DENY, None),  # the pattern matches the whole name
        ("refund_order_all", {"amount": 1}, Decision.DENY, None),
        ("delete_everything", {}, Decision.DENY, None),  # deny by default
    ],
)
def test_the_api_example(
    tool: str, arguments: dict[str, Any], decision: Decision, rule_index: int | None
) -> None:
    result = evaluate(SUPPORT, tool, SideEffect.WRITE, arguments)
    assert (result.decision, result.rule_index) == (decision, rule_index)
    if rule_index is not None:
        assert result.rule_priority == SUPPORT.rules[rule_index].priority


@pytest.mark.parametrize(
    ("constraint", "value", "holds"),
    [
        ({"min": 10}, 10, True),
        ({"min": 10}, 9.999, False),
        ({"min": 10}, 10**400, True),
        ({"max": 10}, -(10**400), True),
        ({"max": 10}, False, False),
        ({"max": 10}, "5", False),
        ({"max": 10}, [5], False),
        ({"min": 0, "max": 10}, math.inf, False),
        ({"min": 0, "max": 10}, Decimal("NaN"), False),
        ({"min": 0, "max": 10}, Decimal("5.5"), True),
        ({"pattern": "ord_[0-9]+"}, "ord_123", True),
        ({"pattern": "ord_[0-9]+"}, "ord_123; DROP", False),  # full match, not a prefix
        ({"pattern": "ord_[0-9]+"}, "xord_123", False),
        ({"pattern": "a|ab"}, "ab", True),
        ({"pattern": "[0-9]+"}, 123, False),  # strings only
        ({"equals": "eu"}, "eu", True),
        ({"equals": "eu"}, "EU", False),
        ({"equals": 1}, 1.0, True),
        ({"equals": 1}, True, False),
        ({"equals": 1}, "1", False),
        ({"equals": True}, 1, False),
        ({"equals": False}, False, True),
        ({"in": ["eu", "us"]}, "us", True),
        ({"in": ["eu", "us"]}, "uk", False),
        ({"in": [1, 2]}, 2.0, True),
        ({"in": [1, 2]}, True, False),
        ({"in": [0.5]}, math.nan, False),
        ({"pattern": "[a-z]+", "in": ["abc", "XYZ"]}, "abc", True),
        ({"pattern": "[a-z]+", "in": ["abc", "XYZ"]}, "XYZ", False),
    ],
)
def test_each_constraint_kind(constraint: dict[str, Any], value: Any, holds: bool) -> None:
    policy = _policy({"tool": "t", "decision": "allow", "when": {"v": constraint}})
    assert (
        check_constraint(Constraint.model_validate(constraint).compiled("v"), value) is None
    ) is holds
    decision = evaluate(policy, "t", SideEffect.READ, {"v": value})
    assert decision.decision is (Decision.ALLOW if holds else Decision.DENY)


def test_a_failed_constraint_is_reported() -> None:
    decision = evaluate(SUPPORT, "refund_order", SideEffect.WRITE, {"amount": 250})
    assert decision.decision is Decision.REQUIRE_APPROVAL
    assert decision.reason == "refunds over $100 need a reviewer"
    [failure] = decision.failures
    assert (failure.rule_index, failure.argument, failure.check) == (0, "amount", "max")
    assert "250 > max 100" in failure.detail
    absent = evaluate(SUPPORT, "refund_order", SideEffect.WRITE, {})
    assert absent.failures[0].check == "absent"
    json.dumps(decision.audit())


def test_priority_orders_rules_and_ties_keep_list_order() -> None:
    policy = _policy(
        {"tool": "t", "decision": "deny", "priority": 50},
        {"tool": "t", "decision": "require_approval", "priority": 5},
        {"tool": "t", "decision": "allow", "priority": 5},
    )
    decision = evaluate(policy, "t", SideEffect.READ, {})
    assert (decision.decision, decision.rule_index) == (Decision.REQUIRE_APPROVAL, 1)
    unprioritised = _policy({"tool": "t", "decision": "deny"}, {"tool": "t", "decision": "allow"})
    assert evaluate(unprioritised, "t", SideEffect.READ, {}).decision is Decision.DENY


def test_a_later_rule_does_not_widen_an_earlier_deny() -> None:
    policy = _policy(
        {"tool": "refund_order", "when": {"amount": {"min": 1000}}, "decision": "deny",
         "priority": 1},
        {"tool": "refund_.*", "decision": "allow", "priority": 2},
    )  # fmt: skip
    assert evaluate(policy, "refund_order", "write", {"amount": 5000}).decision is Decision.DENY
    assert evaluate(policy, "refund_order", "write", {"amount": 5}).decision is Decision.ALLOW


def test_the_default_decides_when_no_rule_matches() -> None:
    assert evaluate(PolicySpec(), "lookup_order", SideEffect.READ, {}).decision is Decision.DENY
    ask = PolicySpec(default="require_approval")
    decision = evaluate(ask, "anything", SideEffect.READ, {})
    assert (decision.decision, decision.rule_index) == (Decision.REQUIRE_APPROVAL, None)


@pytest.mark.parametrize(
    ("side_effect", "decision"),
    [
        (SideEffect.READ, Decision.ALLOW),
        (SideEffect.WRITE, Decision.DENY),
        (SideEffect.DESTRUCTIVE, Decision.DENY),
        ("write", Decision.DENY),
    ],
)
def test_read_only_mode_denies_every_write_whatever_the_rules(
    side_effect: SideEffect | str, decision: Decision
) -> None:
    policy = _policy({"tool": ".*", "decision": "allow"}, read_only=True)
    result = evaluate(policy, "any_tool", side_effect, {})
    assert result.decision is decision
    assert result.read_only is (decision is Decision.DENY)


def test_limits_make_a_decision_stricter_never_looser() -> None:
    allowed = evaluate(SUPPORT, "refund_order", SideEffect.WRITE, {"amount": 50})
    breach = LimitBreach(0, "refund_order", "tenant", Decision.REQUIRE_APPROVAL, "over $100 today")
    over = allowed.with_limits(LimitCheck(Decision.REQUIRE_APPROVAL, (0,), (breach,)))
    assert (over.decision, over.reason) == (Decision.REQUIRE_APPROVAL, "over $100 today")
    assert over.audit()["limits"]["breaches"][0]["reason"] == "over $100 today"
    denied = evaluate(SUPPORT, "delete_all", SideEffect.WRITE, {})
    assert denied.with_limits(LimitCheck(Decision.ALLOW)).decision is Decision.DENY


# --- property-based fuzzing against an independent oracle --------------------------------

TOOLS = ["refund_order", "lookup_order", "refund_order_v2"]
TOOL_PATTERNS = ["refund_order", "refund_.*", "lookup_.*", ".*", "refund", "order"]
ARGUMENTS = ["amount", "note"]
STRING_PATTERNS = ["ord_[0-9]+", "[a-z]*", "a|ab", "1.*", ".*", "x"]
EDGE_VALUES = [
    math.nan, math.inf, -math.inf, True, False, None, 0, 1, 100, 100.5, 10**30, -(10**30),
    "", "1", "100", "ab", "abc", "ord_1", "ord_1x", "x", Decimal("NaN"), Decimal("1"),
]  # fmt: skip

finite = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(
    st.sampled_from([0, 1, 100, 100.5, True, False, "", "1", "100", "ab", "ord_1", "x"]),
    finite,
    st.text(max_size=3),
)
values = st.one_of(
    st.sampled_from(EDGE_VALUES),
    scalars,
    st.floats(),  # NaN and ±inf too
    st.integers(),
    st.decimals(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
)


def _ordered_bounds(bounds: dict[str, Any]) -> dict[str, Any]:
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        return {"min": bounds["max"], "max": bounds["min"]}
    return bounds


numeric_bounds = st.fixed_dictionaries({}, optional={"min": finite, "max": finite}).map(
    _ordered_bounds
)
string_pattern = st.fixed_dictionaries({}, optional={"pattern": st.sampled_from(STRING_PATTERNS)})
equality = st.fixed_dictionaries(
    {}, optional={"equals": scalars, "in": st.lists(scalars, min_size=1, max_size=3)}
)
constraints = (
    st.tuples(st.one_of(numeric_bounds, string_pattern), equality)
    .map(lambda parts: {**parts[0], **parts[1]})
    .filter(bool)
)
rules = st.fixed_dictionaries(
    {
        "tool": st.sampled_from(TOOL_PATTERNS),
        "decision": st.sampled_from(["allow", "allow", "deny", "require_approval"]),
        "when": st.dictionaries(st.sampled_from(ARGUMENTS), constraints, max_size=2),
    },
    optional={"priority": st.integers(0, 3)},
)


def _kind(value: Any) -> str | None:
    if type(value) is bool:
        return "bool"
    if type(value) in (int, float, Decimal):
        return "number"
    if type(value) is str:
        return "string"
    return None


def _finite(value: Any) -> bool:
    if _kind(value) != "number":
        return False
    return (
        value.is_finite()
        if isinstance(value, Decimal)
        else not math.isinf(value) and value == value
    )


def _oracle_holds(constraint: dict[str, Any], arguments: dict[str, Any], name: str) -> bool:
    if name not in arguments:
        return False
    value = arguments[name]
    if "min" in constraint and not (_finite(value) and value >= constraint["min"]):
        return False
    if "max" in constraint and not (_finite(value) and value <= constraint["max"]):
        return False
    if "pattern" in constraint and not (
        _kind(value) == "string" and re.match(f"(?:{constraint['pattern']})\\Z", value)
    ):
        return False
    options = [constraint["equals"]] if "equals" in constraint else []
    for group in (options, constraint.get("in")):
        if group and not any(
            _kind(value) == _kind(option) and _finite_or_plain(value) and value == option
            for option in group
        ):
            return False
    return True


def _finite_or_plain(value: Any) -> bool:
    return _kind(value) != "number" or _finite(value)


def _oracle(policy: dict[str, Any], tool: str, arguments: dict[str, Any]) -> tuple[str, int | None]:
    indexed = sorted(
        enumerate(policy["rules"]), key=lambda pair: (pair[1].get("priority", 100), pair[0])
    )
    for index, rule in indexed:
        if re.match(f"(?:{rule['tool']})\\Z", tool) and all(
            _oracle_holds(constraint, arguments, name)
            for name, constraint in rule.get("when", {}).items()
        ):
            return rule["decision"], index
    return "deny", None


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.filter_too_much],
)
@given(
    raw_rules=st.lists(rules, max_size=4),
    tool=st.sampled_from(TOOLS),
    arguments=st.fixed_dictionaries({}, optional={name: values for name in ARGUMENTS}),
)
def test_nothing_is_allowed_that_the_oracle_would_not_allow(
    raw_rules: list[dict[str, Any]], tool: str, arguments: dict[str, Any]
) -> None:
    raw = {"rules": raw_rules}
    try:
        policy = PolicySpec.model_validate(raw)
    except ValidationError:
        assume(False)
        return
    decision = evaluate(policy, tool, SideEffect.READ, arguments)
    assert (decision.decision.value, decision.rule_index) == _oracle(raw, tool, arguments)
    if decision.allowed:
        assert decision.rule_index is not None
        rule = raw_rules[decision.rule_index]
        assert rule["decision"] == "allow"
        for name, constraint in rule.get("when", {}).items():
            assert _oracle_holds(constraint, arguments, name)


@settings(max_examples=600, deadline=None, database=None)
@given(constraint=constraints, value=values)
def test_a_constraint_holds_exactly_when_the_oracle_says(
    constraint: dict[str, Any], value: Any
) -> None:
    holds = check_constraint(Constraint.model_validate(constraint).compiled("v"), value) is None
    assert holds is _oracle_holds(constraint, {"v": value}, "v")


@settings(database=None)
@given(
    bounds=st.fixed_dictionaries({}, optional={"min": finite, "max": finite}).filter(bool),
    nan=st.sampled_from([math.nan, -math.nan, Decimal("NaN"), Decimal("-NaN"), Decimal("sNaN")]),
)
def test_nan_never_meets_a_numeric_bound(bounds: dict[str, Any], nan: Any) -> None:
    assume(bounds.get("min", -math.inf) <= bounds.get("max", math.inf))
    assert check_constraint(Constraint.model_validate(bounds).compiled("v"), nan) is not None
