"""Example tools for the demo, the tests and the benchmarks (enabled with agentd's ``examples`` flag).

Deterministic and offline. Every execution is appended to the JSON-lines file
named by ``$MABEAM_TOOL_LEDGER`` when it is set, so a test can count how often a
tool really ran across processes and crashes (exactly once, or never twice).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Literal

from agentd.tools.registry import tool


def _record(name: str, arguments: dict[str, object]) -> None:
    path = os.environ.get("MABEAM_TOOL_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as ledger:  # one short line per call: atomic enough for O_APPEND
            ledger.write(json.dumps({"tool": name, "arguments": arguments, "pid": os.getpid(),
                                     "time": time.time()}, sort_keys=True) + "\n")


@tool(timeout=10)
async def weather(city: str, unit: Literal["c", "f"] = "c") -> dict[str, object]:
    """Current weather in a city (a deterministic stand-in for a weather API)."""
    _record("weather", {"city": city, "unit": unit})
    celsius = 10 + sum(map(ord, city.lower())) % 20
    return {"city": city, "temperature": celsius if unit == "c" else round(celsius * 9 / 5 + 32, 1), "unit": unit,
            "sky": ("clear", "cloudy", "rain")[len(city) % 3]}


@tool(timeout=10)
async def add(a: float, b: float) -> float:
    """Adds two numbers."""
    _record("add", {"a": a, "b": b})
    return a + b


@tool(timeout=120, settlement="dedupe_reconcile_required", max_concurrency=1)
async def refund(order_id: str, amount: float, hold_s: float = 0.0) -> dict[str, object]:
    """Refunds an order (a side effect in the world: never run twice for one call).

    ``hold_s`` keeps the refund in flight that long (to kill its agentd mid-refund in the demo and tests).
    """
    _record("refund", {"order_id": order_id, "amount": amount})
    if hold_s > 0:
        await asyncio.sleep(min(hold_s, 100.0))
    return {"order_id": order_id, "refunded": amount, "status": "refunded"}


@tool(timeout=30)
async def slow_echo(text: str, seconds: float = 0.5) -> str:
    """Echoes after a pause (for timeouts and crash tests)."""
    _record("slow_echo", {"text": text, "seconds": seconds})
    await asyncio.sleep(seconds)
    return text


EXAMPLE_TOOLS = (weather, add, refund, slow_echo)
