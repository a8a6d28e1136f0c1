"""Tools: async Python functions with typed parameters, exported to models as JSON Schema.

Define a tool with :func:`tool` and put it in a :class:`ToolRegistry`::

    @tool(timeout=10, settlement="safe_retry")
    async def weather(city: str, unit: Literal["c", "f"] = "c") -> dict[str, float]:
        \"\"\"Current temperature in a city.\"\"\"
        ...

    registry = ToolRegistry([weather])
    registry.schemas()          # what the model sees (OpenAI "tools" format)

Parameters are validated by a pydantic model built from the signature, so a
model's arguments either fit the schema it was shown or are refused with the
fields that failed (:class:`ToolArgumentError`). A tool that wants to report
progress takes a keyword parameter ``progress`` (an async callable taking one
JSON value); it is not part of the schema.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

#: Tool names as models accept them (OpenAI: ^[a-zA-Z0-9_-]{1,64}$); dots allowed for namespaces.
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
PROGRESS_PARAM = "progress"


class Settlement(StrEnum):
    """What a retry of the tool after a crash may do (the settlement boundary).

    ``safe_retry``: running it again is harmless (reads, idempotent writes).
    ``dedupe_reconcile_required``: it changes the world; after a crash it is never
    run again blindly — the executor reconciles by its idempotency key instead.
    """

    SAFE_RETRY = "safe_retry"
    DEDUPE_RECONCILE_REQUIRED = "dedupe_reconcile_required"


class ToolError(Exception):
    """Base of the errors a tool call can end with; ``error_class`` is what receipts record."""

    error_class = "tool_error"


class UnknownTool(ToolError):
    """The model asked for a tool that is not registered."""

    error_class = "unknown_tool"


class ToolArgumentError(ToolError):
    """The arguments do not fit the tool's schema; ``violations`` maps field path → what is wrong."""

    error_class = "invalid_arguments"

    def __init__(self, message: str, violations: dict[str, str]) -> None:
        super().__init__(message)
        self.violations = violations


class ToolOutputError(ToolError):
    """The tool returned something that cannot be serialised to JSON."""

    error_class = "unserialisable_output"


ToolFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    """A registered tool: the function, its parameter model and how the runtime treats it."""

    name: str
    description: str
    function: ToolFunction
    params: type[BaseModel]
    settlement: Settlement = Settlement.SAFE_RETRY
    timeout: float = 30.0
    max_concurrency: int | None = None
    streams_progress: bool = False
    output: TypeAdapter[Any] | None = field(default=None, compare=False)

    def schema(self) -> dict[str, Any]:
        """The tool as a model sees it: OpenAI's ``{"type": "function", "function": {...}}``."""
        parameters = self.params.model_json_schema()
        parameters.pop("title", None)
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": parameters}}

    def parse_arguments(self, arguments: str | dict[str, Any] | None) -> BaseModel:
        """Validate a model's arguments (a JSON string or an object) into the parameter model."""
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as error:
                raise ToolArgumentError(f"arguments for {self.name!r} are not JSON: {error}",
                                        {"": "not valid JSON"}) from None
        if not isinstance(arguments, dict):
            raise ToolArgumentError(f"arguments for {self.name!r} must be a JSON object",
                                    {"": f"expected an object, got {type(arguments).__name__}"})
        try:
            return self.params.model_validate(arguments)
        except ValidationError as error:
            violations = {".".join(str(p) for p in e["loc"]) or "": e["msg"] for e in error.errors()}
            raise ToolArgumentError(f"arguments for {self.name!r} do not fit its schema: "
                                    + "; ".join(f"{k or '(root)'}: {v}" for k, v in violations.items()),
                                    violations) from None

    def dump_output(self, value: Any) -> Any:
        """The tool's return value as plain JSON data (ToolOutputError when it has no JSON form)."""
        try:
            data = (self.output or _ANY).dump_python(value, mode="json")
            json.dumps(data)
        except Exception as error:  # pydantic raises several types for values it cannot serialise
            raise ToolOutputError(f"tool {self.name!r} returned a value with no JSON form "
                                  f"({type(value).__name__}): {error}") from None
        return data


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def tool(function: ToolFunction | None = None, *, name: str | None = None, description: str | None = None,
         settlement: Settlement | str = Settlement.SAFE_RETRY, timeout: float = 30.0,
         max_concurrency: int | None = None) -> Any:
    """Make an async function a :class:`Tool` (usable bare, ``@tool``, or with options, ``@tool(...)``)."""

    def wrap(fn: ToolFunction) -> Tool:
        return make_tool(fn, name=name, description=description, settlement=Settlement(settlement),
                         timeout=timeout, max_concurrency=max_concurrency)

    return wrap(function) if function is not None else wrap


def make_tool(fn: ToolFunction, *, name: str | None = None, description: str | None = None,
              settlement: Settlement = Settlement.SAFE_RETRY, timeout: float = 30.0,
              max_concurrency: int | None = None) -> Tool:
    """Build a :class:`Tool` from an async function's signature and docstring."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {fn.__name__!r} must be an async function")
    tool_name = name or fn.__name__
    if not tool_name or len(tool_name) > 64 or set(tool_name) - _NAME_CHARS:
        raise ValueError(f"tool name {tool_name!r}: 1-64 characters of letters, digits, '_', '-', '.'")
    if timeout <= 0:
        raise ValueError("tool timeout must be positive")
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    streams = False
    for param in inspect.signature(fn).parameters.values():
        if param.name == PROGRESS_PARAM:
            streams = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args/**kwargs cannot be described to a model")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    params = create_model(f"{tool_name.replace('.', '_').replace('-', '_')}_params",
                          __config__=ConfigDict(extra="forbid"), **fields)
    returns = hints.get("return")
    output = TypeAdapter(returns) if returns not in (None, Any) else None
    doc = inspect.getdoc(fn) or ""
    return Tool(name=tool_name, description=description or doc.split("\n\n")[0].strip() or tool_name,
                function=fn, params=params, settlement=settlement, timeout=timeout,
                max_concurrency=max_concurrency, streams_progress=streams, output=output)


class ToolRegistry:
    """The tools an agent may offer a model, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.add(item)

    def add(self, item: Tool) -> None:
        """Register a tool (ValueError when the name is taken)."""
        if item.name in self._tools:
            raise ValueError(f"tool {item.name!r} is already registered")
        self._tools[item.name] = item

    def get(self, name: str) -> Tool:
        """The tool called ``name`` (UnknownTool, listing what exists, when there is none)."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"no tool named {name!r} (available: {known})") from None

    def names(self) -> list[str]:
        """Registered tool names, sorted."""
        return sorted(self._tools)

    def schemas(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The model-facing schemas of every tool (or of ``names``), sorted by name."""
        chosen = sorted(self._tools) if names is None else sorted(names)
        return [self.get(n).schema() for n in chosen]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)
