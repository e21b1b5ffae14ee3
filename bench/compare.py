"""One sitting against the peers: run the peer benchmarks (`../shared/peers/run.sh all`:
LangGraph + AsyncPostgresSaver and DBOS Transact, the same work on an embedded
PostgreSQL), then ours `--repeats` times, and print one table of medians with the best
peer's ratio and the runtime issue's targets. Figures drift on this machine within minutes,
so only a table from one sitting says anything.

  .venv/bin/python bench/compare.py [--repeats 3] [--peers-log FILE] [--seq 200 --tp 1000]

`--peers-log FILE` reads the peers' output from an earlier `run.sh all` instead of running
them (~10 minutes); `make bench-compare` runs everything.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, machine

PEERS = ROOT.parent / "shared" / "peers" / "run.sh"
PEER_NAMES = ("LangGraph", "DBOS")

# The runtime issue's targets: ratios against the best peer, and absolute figures.
RATIO_TARGET = 5.0
TARGETS = {
    "turn_ms": ("≤ 0.9 ms", lambda v: v <= 0.9),
    "turns_per_s": ("≥ 1,000/s", lambda v: v >= 1000),
    "wall_500": ("≤ 3 s", lambda v: v <= 3),
    "wall_2000": ("≤ 6 s", lambda v: v <= 6),
    "fsyncs": ("≤ 9", lambda v: v <= 9.05),
    "state_bytes": ("≤ 3,000 B", lambda v: v <= 3000),
}


def _value(name: str, section: str, label: str) -> float:
    found = re.search(rf"^{re.escape(label)}\s+(-?[\d.]+)\s*$", section, flags=re.M)
    if found is None:
        raise ValueError(f"{name}: no line '{label}' in the peers' output")
    return float(found.group(1))


def parse_peers(text: str) -> dict[str, dict[str, float]]:
    """The medians each peer prints after its `=== <name>` line (see ../shared/peers)."""
    peers: dict[str, dict[str, float]] = {}
    sections = re.split(r"^=== ", text, flags=re.M)[1:]
    for section in sections:
        name = next((n for n in PEER_NAMES if section.startswith(n)), None)
        if name is None:
            continue

        tables = re.findall(
            r"^\s+(\S+)\s+rows:\s+(\d+)\s+bytes \(pg_column_size\): (\d+)", section, re.M
        )
        tables = [t for t in tables if t[0] != "total"]
        server = re.search(
            r"server net: .*?WAL bytes ([\d.]+)\s+WAL fsyncs ([\d.]+)", section
        ) or re.search(r"server: .*?WAL bytes ([\d.]+)\s+WAL fsyncs ([\d.]+)", section)
        if server is None:
            raise ValueError(f"{name}: no WAL figures in the peers' output")
        peers[name] = {
            "turn_ms": _value(name, section, "a.   p50 ms/model turn"),
            "turn_p99_ms": _value(name, section, "a.   p99 ms/model turn"),
            "turns_per_s": _value(name, section, "b.   model turns/s"),
            "wall_500": _value(name, section, "c. 500 sessions at once, 200 ms model: wall s"),
            "rss_mib": _value(name, section, "c.   peak RSS during phase c (VmHWM), MiB"),
            "fsyncs": float(server.group(2)),
            "wal_kib": float(server.group(1)) / 1024,
            "state_bytes": float(sum(int(b) for _, _, b in tables)),
            "state_rows": float(sum(int(n) for _, n, _ in tables)),
        }
    missing = [n for n in PEER_NAMES if n not in peers]
    if missing:
        raise ValueError(f"no figures for {', '.join(missing)} in the peers' output")
    return peers


def run_ours(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for repeat in range(args.repeats):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable, str(ROOT / "bench" / "bench_runtime.py"),
                "--seq", str(args.seq), "--tp", str(args.tp), "--big", "500,2000",
                "--json", out.name,
            ]  # fmt: skip
            print(f"# ours, run {repeat + 1} of {args.repeats}", file=sys.stderr, flush=True)
            subprocess.run(command, check=True, stdout=sys.stderr)
            figures = json.loads(Path(out.name).read_text())
        a, b, big = figures["a"], figures["b"], figures["big"]
        runs.append(
            {
                "turn_ms": a["e2e_p50"] / 4,
                "turn_p99_ms": a["e2e_p99"] / 4,
                "commit_floor_ms": a["commit_floor_ms"],
                "floor_turn_ms": a["fsyncs"] * a["commit_floor_ms"] / 4,
                "turns_per_s": b["turns_per_s"],
                "wall_500": big["500"]["wall"],
                "wall_2000": big["2000"]["wall"],
                "rss_mib": max(big["500"]["peak_rss_mib"]),
                "fsyncs": a["fsyncs"],
                "wal_kib": a["wal_bytes"] / 1024,
                "state_bytes": a["state_bytes"],
                "state_rows": a["rows"],
            }
        )
    return runs


# (key, label, lower is better)
MEASURES = (
    ("turn_ms", "a. ms per turn, concurrency 1, p50", True),
    ("turn_p99_ms", "a. ms per turn, p99", True),
    ("commit_floor_ms", "a. PostgreSQL floor: one-row commit, ms", True),
    ("floor_turn_ms", "a. our durable commits at that floor, ms per turn", True),
    ("turns_per_s", "b. turns/s at concurrency 50", False),
    ("wall_500", "c. 500 sessions, 200 ms model: wall s", True),
    ("wall_2000", "c. 2,000 sessions: wall s", True),
    ("rss_mib", "c. peak RSS per process, MiB (500)", True),
    ("fsyncs", "d. WAL fsyncs per session", True),
    ("wal_kib", "d. WAL KiB per session", True),
    ("state_bytes", "d. session state, bytes", True),
    ("state_rows", "d. session state, rows", True),
)


def table(runs: list[dict[str, Any]], peers: dict[str, dict[str, float]]) -> str:
    lines = [
        "| measure | ours (median; runs) | LangGraph | DBOS | best peer ÷ ours | target |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, lower in MEASURES:
        values = [run[key] for run in runs]
        ours = statistics.median(values)
        shown = f"**{ours:.2f}** ({', '.join(f'{v:.2f}' for v in values)})"
        peer_values = [peers[name].get(key) for name in PEER_NAMES]
        known = [v for v in peer_values if v is not None]
        ratio = ""
        if known and ours:
            best = min(known) if lower else max(known)
            factor = best / ours if lower else ours / best
            ratio = f"{factor:.1f}x"
            if key in ("turn_ms", "turns_per_s", "wall_500"):
                ratio += " — met" if factor >= RATIO_TARGET else f" — {RATIO_TARGET:g}x not met"
        target = ""
        if key in TARGETS:
            text, met = TARGETS[key]
            target = f"{text}: {'met' if met(ours) else 'not met'}"
        cells = ["—" if v is None else f"{v:.2f}" for v in peer_values]
        lines.append(f"| {label} | {shown} | {' | '.join(cells)} | {ratio} | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers-log", type=Path, help="the output of an earlier run.sh all")
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--tp", type=int, default=1000)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.peers_log is not None:
        peers_output = args.peers_log.read_text()
    elif PEERS.exists():
        print(f"# peers: {PEERS} all (about 10 minutes)", file=sys.stderr, flush=True)
        peers_output = subprocess.run(
            ["bash", str(PEERS), "all"], check=True, capture_output=True, text=True
        ).stdout
        print(peers_output, file=sys.stderr, flush=True)  # their whole report, for the record
    else:
        sys.exit(f"the peer benchmarks are not at {PEERS}; pass --peers-log FILE")
    peers = parse_peers(peers_output)
    runs = run_ours(args)
    print(f"# one sitting from {started} — {machine()}")
    print(table(runs, peers))


if __name__ == "__main__":
    main()
