"""Gateway overhead per model call: the gateway (breaker permit and outcome in Redis, retry
wrapper, usage and cost accounting) vs the bare SDK, both streaming from the fake Anthropic
server on loopback (its own process), in the same run, alternating blocks so machine drift
hits both alike. Prints median and p99 per side and the difference.

    .venv/bin/python bench/bench_gateway.py [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anthropic  # noqa: E402
import httpx  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from app.embedded import resolve_redis_url  # noqa: E402
from app.llm.model import ModelRequest  # noqa: E402
from app.llm.providers import build_gateway  # noqa: E402
from app.settings import AnthropicSettings, LlmSettings, Settings  # noqa: E402

API_KEY = "bench-key"
MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Say something short."}]}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_up(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                await http.get(base_url + "/")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the fake Anthropic server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int, block: int) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    fake = subprocess.Popen(
        [sys.executable, "-m", "app.llm.fake_anthropic", "--port", str(port), "--api-key", API_KEY],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until_up(base_url)
        settings = Settings(
            anthropic=AnthropicSettings(api_key=API_KEY, base_url=base_url),
            llm=LlmSettings(),
        )
        redis = Redis.from_url(resolve_redis_url(settings))
        gateway = build_gateway(settings, redis)
        sdk = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=base_url, max_retries=0)
        request = ModelRequest(
            model=MODEL, system="You are terse.", messages=MESSAGES, tools=[], max_tokens=64,
            tenant_id="bench",
        )  # fmt: skip

        async def direct() -> None:
            async with sdk.messages.stream(
                model=MODEL, system="You are terse.", messages=MESSAGES, max_tokens=64
            ) as stream:
                async for _ in stream:
                    pass
                await stream.get_final_message()

        async def through_gateway() -> None:
            await gateway.complete(request)

        timings: dict[str, list[float]] = {"sdk": [], "gateway": []}
        sides = {"sdk": direct, "gateway": through_gateway}
        for side in sides.values():  # warm-up: connections, scripts loaded
            for _ in range(50):
                await side()
        done = 0
        while done < calls:
            for name, side in sides.items():
                for _ in range(block):
                    started = time.perf_counter()
                    await side()
                    timings[name].append((time.perf_counter() - started) * 1000)
            done += block
        print(f"gateway overhead, {calls} streamed calls per side against the fake on loopback")
        print(f"machine: {os.cpu_count()} cores; blocks of {block} alternating")
        for name, values in timings.items():
            print(
                f"  {name:8s} median {statistics.median(values):6.3f} ms   "
                f"p99 {percentile(values, 0.99):6.3f} ms"
            )
        median_diff = statistics.median(timings["gateway"]) - statistics.median(timings["sdk"])
        p99_diff = percentile(timings["gateway"], 0.99) - percentile(timings["sdk"], 0.99)
        print(f"  overhead median {median_diff:+.3f} ms   p99 {p99_diff:+.3f} ms")
        await gateway.aclose()
        await sdk.close()
        await redis.aclose()
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--block", type=int, default=50)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.block))
