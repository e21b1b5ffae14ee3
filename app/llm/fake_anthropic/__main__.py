"""`python -m app.llm.fake_anthropic --host 127.0.0.1 --port 8765 [--api-key KEY]`:
serve the fake Anthropic API for demos (see the package docstring for what it answers)."""

from __future__ import annotations

import argparse

import uvicorn

from app.llm.fake_anthropic.app import DEFAULT_API_KEY, FakeAnthropic
from app.llm.fake_anthropic.server import install_quiet_drops, uvicorn_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.llm.fake_anthropic", description="A fake Anthropic Messages API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the one key it accepts")
    parser.add_argument(
        "--no-tool-calls",
        action="store_true",
        help="always answer with text (by default a new user question calls the first tool)",
    )
    parser.add_argument("--stream-chunk-chars", type=int, default=16)
    parser.add_argument("--cache-min-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    app = FakeAnthropic(
        args.api_key,
        call_tools_by_default=not args.no_tool_calls,
        stream_chunk_chars=args.stream_chunk_chars,
        cache_min_tokens=args.cache_min_tokens,
    )
    install_quiet_drops()
    print(f"fake Anthropic API on http://{args.host}:{args.port} (api key {args.api_key})")
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, log_level="info")).run()


if __name__ == "__main__":
    main()
