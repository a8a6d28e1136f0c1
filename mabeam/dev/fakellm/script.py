"""What the fake model answers, and which fault it injects: the pure part of the fake LLM server.

A :class:`Script` is a list of rules, tried in order against each request. A rule
may name a ``model`` (``*`` or absent: any) and a ``match`` (a regular expression
searched in the last user message); the first rule that fits decides. A rule with
``times`` applies that many times and then is skipped, which makes scripted
*steps*: ``[{"model": "m", "fault": {"status": 503}, "times": 2}, {"model": "m",
"reply": "ok"}]`` fails twice, then answers.

A rule answers with ``reply`` (text), ``json`` (an object sent as the text),
``tool_calls`` (``[{"name", "arguments"}]``), or a generator: ``generate: "echo"``
(the default: ``echo: <last user message>``) or ``generate: "fixed"`` with
``tokens: N`` (``tok1 tok2 ...``). ``fault`` injects a failure instead of (or,
for ``latency_ms`` and ``drop_after``, before part of) the answer:

- ``status`` (429, 500, 503, 400, ...) with ``retry_after`` (the header's value)
  and ``message``;
- ``latency_ms`` before answering; ``chunk_delay_ms`` between stream chunks;
- ``hang`` (never answer; ``hang_s`` bounds it, default 600);
- ``malformed`` (a 200 whose body is not the protocol's JSON);
- ``drop_after`` N: close the connection after N stream chunks (or mid-body).

The same fault fields can come per request in the ``x-fake-fault`` header
(``status=429,retry_after=1``, ``hang``, ``malformed``, ``drop_after=2``), and per
model in ``models: {name: {"fault": {...}}}``.

Token counts are "realistic": a token is a word or a punctuation mark
(``\\w+|[^\\w\\s]``), each message adds 3, and ``max_tokens`` cuts the answer
(finish reason ``length``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
PIECE_RE = re.compile(r"\s*\S+")
MESSAGE_OVERHEAD = 3


def count_tokens(text: str) -> int:
    """Tokens in a text, the fake way: words and punctuation marks."""
    return len(TOKEN_RE.findall(text))


def pieces(text: str) -> list[str]:
    """The text split into stream chunks (a word with its leading space each); joined they give the text."""
    found = PIECE_RE.findall(text)
    tail = text[len("".join(found)):]
    if tail:
        found.append(tail)
    return found


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """The text cut to at most `max_tokens` tokens (whole pieces), and whether it was cut."""
    if max_tokens <= 0 or count_tokens(text) <= max_tokens:
        return text, False
    out, used = [], 0
    for piece in pieces(text):
        cost = count_tokens(piece)
        if used + cost > max_tokens:
            break
        out.append(piece)
        used += cost
    return "".join(out), True


@dataclass(frozen=True, slots=True)
class Fault:
    """A failure to inject (see the module docstring)."""

    status: int = 0
    retry_after: str = ""
    message: str = ""
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    hang: bool = False
    hang_s: float = 600.0
    malformed: bool = False
    drop_after: int = -1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """From a script's fault object; ValueError on unknown fields."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(status=int(data.get("status", 0)), retry_after=str(data.get("retry_after", "")),
                   message=str(data.get("message", "")), latency_ms=float(data.get("latency_ms", 0.0)),
                   chunk_delay_ms=float(data.get("chunk_delay_ms", 0.0)), hang=bool(data.get("hang", False)),
                   hang_s=float(data.get("hang_s", 600.0)), malformed=bool(data.get("malformed", False)),
                   drop_after=int(data.get("drop_after", -1)))

    @classmethod
    def from_header(cls, value: str) -> Fault:
        """From ``x-fake-fault: status=429,retry_after=1`` (bare names mean true)."""
        data: dict[str, Any] = {}
        for part in value.split(","):
            key, sep, raw = part.strip().partition("=")
            if not key:
                continue
            data[key] = raw if sep else True
        return cls.from_dict(data)

    def merged(self, other: Fault | None) -> Fault:
        """This fault with `other`'s non-default fields on top."""
        if other is None:
            return self
        base = {name: getattr(self, name) for name in self.__dataclass_fields__}
        default = Fault()
        for name in self.__dataclass_fields__:
            value = getattr(other, name)
            if value != getattr(default, name):
                base[name] = value
        return Fault(**base)

    @property
    def fails(self) -> bool:
        """Whether this fault replaces the answer (an error status, a hang, a malformed body)."""
        return self.status >= 400 or self.hang or self.malformed


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer: text and tool calls (each ``(id, name, arguments JSON)``)."""

    text: str
    tool_calls: tuple[tuple[str, str, str], ...] = ()


@dataclass
class Rule:
    """One scripted rule (see the module docstring)."""

    model: str = "*"
    match: re.Pattern[str] | None = None
    reply: str | None = None
    json_value: Any = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    generate: str = "echo"
    tokens: int = 16
    fault: Fault | None = None
    times: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        """From a script's rule object; ValueError on bad fields."""
        known = {"model", "match", "reply", "json", "tool_calls", "generate", "tokens", "fault", "times"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rule fields: {sorted(unknown)}")
        generate = str(data.get("generate", "echo"))
        if generate not in ("echo", "fixed"):
            raise ValueError("generate must be 'echo' or 'fixed'")
        return cls(model=str(data.get("model", "*")),
                   match=re.compile(data["match"]) if data.get("match") else None,
                   reply=data.get("reply"), json_value=data.get("json"),
                   tool_calls=list(data.get("tool_calls", [])), generate=generate,
                   tokens=int(data.get("tokens", 16)),
                   fault=Fault.from_dict(data["fault"]) if data.get("fault") else None,
                   times=None if data.get("times") is None else int(data["times"]))

    def fits(self, model: str, prompt: str) -> bool:
        """Whether this rule applies to a request."""
        if self.times is not None and self.times <= 0:
            return False
        if self.model not in ("*", model):
            return False
        return self.match is None or self.match.search(prompt) is not None

    def answer(self, prompt: str, serial: int) -> Answer:
        """This rule's answer to a prompt (`serial` numbers tool call ids)."""
        calls = tuple((f"call_{serial}_{i}", str(c["name"]), json.dumps(c.get("arguments", {}), sort_keys=True))
                      for i, c in enumerate(self.tool_calls))
        if self.reply is not None:
            return Answer(str(self.reply), calls)
        if self.json_value is not None:
            return Answer(json.dumps(self.json_value, sort_keys=True), calls)
        if calls:
            return Answer("", calls)
        if self.generate == "fixed":
            return Answer(" ".join(f"tok{i + 1}" for i in range(self.tokens)))
        return Answer(f"echo: {prompt}")


@dataclass
class Decision:
    """The script's verdict on one request: the answer and the fault to inject (None for none)."""

    answer: Answer
    fault: Fault | None


class Script:
    """The server's rules and per-model settings; :meth:`decide` is called once per request."""

    def __init__(self, rules: list[Rule] | None = None, models: dict[str, Fault] | None = None,
                 model_names: list[str] | None = None) -> None:
        self.rules = rules or []
        self.model_faults = models or {}
        self.model_names = model_names or []
        self.serial = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Script:
        """From ``{"rules": [...], "models": {name: {"fault": {...}}}}``; ValueError on bad input."""
        if not isinstance(data, dict):
            raise ValueError("a script must be a JSON object")
        unknown = set(data) - {"rules", "models"}
        if unknown:
            raise ValueError(f"unknown script fields: {sorted(unknown)}")
        rules = [Rule.from_dict(r) for r in data.get("rules", [])]
        models: dict[str, Fault] = {}
        for name, spec in (data.get("models") or {}).items():
            if spec.get("fault"):
                models[name] = Fault.from_dict(spec["fault"])
        return cls(rules, models, sorted(data.get("models") or {}))

    def decide(self, model: str, prompt: str, json_mode: bool, header_fault: Fault | None) -> Decision:
        """Pick the first fitting rule (using up one of its ``times``), then layer model and header faults."""
        self.serial += 1
        chosen: Rule | None = None
        for rule in self.rules:
            if rule.fits(model, prompt):
                chosen = rule
                if rule.times is not None:
                    rule.times -= 1
                break
        if chosen is None:
            answer = Answer(json.dumps({"echo": prompt})) if json_mode else Answer(f"echo: {prompt}")
            fault: Fault | None = None
        else:
            answer = chosen.answer(prompt, self.serial)
            fault = chosen.fault
        for extra in (self.model_faults.get(model), header_fault):
            if extra is not None:
                fault = extra if fault is None else fault.merged(extra)
        return Decision(answer, fault)
