"""Runs one tool call: validate the input, run under a timeout, retry transient failures of
idempotent tools, cap the output, and wrap it as untrusted data for the model.

Never raises for a tool's own failure: every outcome (success, error, timeout) comes back as
a `ToolOutcome` the loop turns into a `tool_result` block.

Timeouts: an async executor is cancelled at its deadline. A synchronous executor runs in a
worker thread, which Python cannot cancel: at the deadline we stop waiting and report the
timeout; the thread runs on to its end in the background and its result is discarded. For a
non-idempotent tool either way the outcome is *unknown* (it may have taken effect), so it is
reported as such and never retried.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from anyio import to_thread
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from app.db.payloads import compact_json
from app.policy.injection import wrap_untrusted
from app.tools.spec import (
    ToolContext,
    ToolInputError,
    ToolOutcomeUnknown,
    ToolSpec,
    TransientToolError,
)

OutcomeStatus = Literal["succeeded", "failed", "unknown"]


@dataclass(frozen=True)
class ToolOutcome:
    status: OutcomeStatus
    content: str  # what the model sees in the tool_result block
    result: Any  # the JSON result (None on failure)
    error: str | None
    attempts: int
    duration_ms: float
    truncated: bool = False

    @property
    def is_error(self) -> bool:
        return self.status != "succeeded"


class _Timeout(Exception):
    pass


def validate_arguments(spec: ToolSpec, arguments: Any) -> dict[str, Any]:
    """The arguments that will really run (defaults applied, types coerced), or ToolInputError."""
    if not isinstance(arguments, dict):
        raise ToolInputError("tool input must be a JSON object")
    if spec.input_model is not None:
        try:
            validated: dict[str, Any] = spec.input_model.model_validate(arguments).model_dump(
                mode="json"
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or '(input)'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ToolInputError(f"invalid input for {spec.name}: {problems}") from exc
        return validated
    error = jsonschema.exceptions.best_match(spec.input_validator.iter_errors(arguments))
    if error is not None:
        path = ".".join(str(part) for part in error.absolute_path) or "(input)"
        raise ToolInputError(f"invalid input for {spec.name}: {path}: {error.message}")
    return arguments


def render_for_model(spec: ToolSpec, result: Any) -> tuple[str, bool]:
    """JSON text of the result, capped at the tool's output size, wrapped as untrusted data."""
    text = result if isinstance(result, str) else compact_json(result)
    truncated = len(text.encode()) > spec.max_output_bytes
    if truncated:
        text = text.encode()[: spec.max_output_bytes].decode(errors="ignore") + " …[truncated]"
    if spec.trusted:
        return text, truncated
    # Delimiters inside the data are neutralised, so the wrapper cannot be closed early.
    return wrap_untrusted(text, f"tool:{spec.name}"), truncated


async def _call_once(spec: ToolSpec, arguments: dict[str, Any], context: ToolContext) -> Any:
    try:
        async with asyncio.timeout(spec.timeout_seconds):
            if inspect.iscoroutinefunction(spec.executor):
                return await spec.executor(arguments, context)
            # A synchronous executor: a thread we can stop waiting for, not stop.
            return await to_thread.run_sync(
                lambda: spec.executor(arguments, context), abandon_on_cancel=True
            )
    except TimeoutError as exc:
        raise _Timeout(f"timed out after {spec.timeout_seconds:g}s") from exc


def _retries(spec: ToolSpec) -> AsyncRetrying:
    """Attempts 2 to `max_attempts` of an idempotent tool's call, after the first failed
    transiently: exponential back-off with jitter, `base_delay` (plus up to as much jitter)
    before the first retry, doubling up to `max_delay`."""
    policy = spec.retry
    backoff = wait_exponential_jitter(
        multiplier=policy.base_delay_seconds,
        max=policy.max_delay_seconds,
        jitter=policy.base_delay_seconds,
    )

    async def back_off(state: RetryCallState) -> None:
        # The n-th retry (its number in this loop: n) waits what attempt n's failure earns.
        await asyncio.sleep(backoff(state))

    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts - 1),
        before=back_off,
        retry=retry_if_exception_type((TransientToolError, _Timeout)),
        reraise=True,
    )


async def execute(spec: ToolSpec, arguments: dict[str, Any], context: ToolContext) -> ToolOutcome:
    """Run a validated call of `spec`; see the module docstring for the guarantees."""
    started = time.perf_counter()
    attempts = 0

    def outcome(
        status: OutcomeStatus,
        content: str,
        result: Any = None,
        error: str | None = None,
        truncated: bool = False,
    ) -> ToolOutcome:
        return ToolOutcome(
            status,
            content,
            result,
            error,
            attempts,
            (time.perf_counter() - started) * 1000,
            truncated,
        )

    try:
        try:
            attempts = 1
            result = await _call_once(spec, arguments, context)
        except (TransientToolError, _Timeout):
            if not spec.idempotent or spec.retry.max_attempts < 2:
                raise
            # Rare, so the retry machinery is only built here (it costs more than a fast tool).
            async for attempt in _retries(spec):
                with attempt:
                    attempts += 1
                    result = await _call_once(spec, arguments, context)
    except (_Timeout, ToolOutcomeUnknown) as exc:
        if spec.idempotent:
            return outcome(
                "failed", f"{spec.name} {exc} (after {attempts} attempts)", error=str(exc)
            )
        message = (
            f"{spec.name} {exc}. It may or may not have taken effect: the outcome is unknown, "
            "so it was not retried. Do not assume either way; check before acting again."
        )
        return outcome("unknown", message, error=str(exc))
    except Exception as exc:
        message = f"{spec.name} failed: {type(exc).__name__}: {exc}"
        return outcome("failed", message, error=message)
    content, truncated = render_for_model(spec, result)
    return outcome("succeeded", content, result=result, truncated=truncated)
