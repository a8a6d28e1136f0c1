"""Templates in pipeline files: ``${{ expression }}``, evaluated in a sandbox (pure).

A string that is exactly one ``${{ … }}`` evaluates to the expression's value
with its type kept (a list stays a list, so ``parallel.over`` can take one); a
string with text around one or more expressions renders to a string. The
expression language is Jinja2's (``steps.outline.output``, ``inputs.topics[:3]``,
``item | upper``, ``x if y else z``), evaluated by Jinja2's immutable sandbox:
no attribute starting with ``_``, no calls that mutate, nothing from Python's
builtins — a pipeline file cannot run code. A name that does not exist is an
error (StrictUndefined), never an empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MARK = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


class _DataEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, reading ``a.b`` on a mapping as the key ``b`` first.

    Jinja2 prefers attributes, so ``inputs.items`` would be ``dict.items``; templates read data, so keys win.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_ENV = _DataEnvironment(undefined=StrictUndefined, autoescape=False)


class TemplateProblem(ValueError):
    """A template that does not parse, or that failed while being evaluated."""


@dataclass(frozen=True, slots=True)
class Template:
    """One compiled template string."""

    source: str
    expressions: tuple[str, ...]
    whole: bool  # the string is exactly one ${{ }}: keep the value's type

    def render(self, context: Mapping[str, Any]) -> Any:
        """The value (``whole``) or the string with every expression substituted."""
        if not self.expressions:
            return self.source
        if self.whole:
            return _evaluate(self.expressions[0], context)
        return MARK.sub(lambda m: _to_text(_evaluate(m.group(1).strip(), context)), self.source)

    def references(self) -> set[str]:
        """The step ids this template reads (``steps.<id>`` or ``steps['<id>']``)."""
        found: set[str] = set()
        for expr in self.expressions:
            found |= step_references(expr)
        return found

    def names(self) -> set[str]:
        """Top-level names the template reads (``inputs``, ``steps``, ``item``, ...)."""
        out: set[str] = set()
        for expr in self.expressions:
            tree = _parse(expr)
            out |= {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}
        return out


def compile_template(text: str) -> Template:
    """Compile a string; raises :class:`TemplateProblem` naming the expression that does not parse."""
    expressions = tuple(m.group(1).strip() for m in MARK.finditer(text))
    for expr in expressions:
        if not expr:
            raise TemplateProblem("empty ${{ }} expression")
        _parse(expr)
    whole = len(expressions) == 1 and MARK.fullmatch(text.strip()) is not None
    return Template(text, expressions, whole)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside ``value`` (dicts and lists recursively); other values as they are."""
    if isinstance(value, str):
        return compile_template(value).render(context)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def templates_in(value: Any) -> list[Template]:
    """Every template string inside ``value`` (dicts and lists recursively)."""
    if isinstance(value, str):
        return [compile_template(value)] if MARK.search(value) else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in templates_in(v)]
    if isinstance(value, list):
        return [t for v in value for t in templates_in(v)]
    return []


def step_references(expr: str) -> set[str]:
    """Step ids an expression reads through ``steps``."""
    tree = _parse(expr)
    found: set[str] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "steps":
            found.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if (isinstance(item.node, nodes.Name) and item.node.name == "steps" and isinstance(item.arg, nodes.Const)
                and isinstance(item.arg.value, str)):
            found.add(item.arg.value)
    return found


def _parse(expr: str) -> nodes.Template:
    try:
        return _ENV.parse("{{ " + expr + " }}")
    except TemplateError as error:
        raise TemplateProblem(f"expression {expr!r} does not parse: {error}") from None


def _evaluate(expr: str, context: Mapping[str, Any]) -> Any:
    try:
        value = _ENV.compile_expression(expr, undefined_to_none=False)(**context)
    except TemplateError as error:  # StrictUndefined, sandbox refusals
        raise TemplateProblem(f"${{{{ {expr} }}}}: {error}") from None
    except Exception as error:  # an expression can divide by zero, index out of range, ...
        raise TemplateProblem(f"${{{{ {expr} }}}}: {type(error).__name__}: {error}") from None
    if isinstance(value, Undefined):
        raise TemplateProblem(f"${{{{ {expr} }}}}: {value._undefined_message}")
    return value


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return str(value)
