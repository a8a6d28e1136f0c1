"""Pipeline files: YAML checked against the published JSON Schema, then typed (pure).

:func:`load_pipeline` refuses a bad file *before* anything runs, with every
problem at once, each naming its line, column and field::

    research.yaml:14:11: steps[2].kind: 'modle' is not one of ['model', 'tool', 'agent', 'pipeline']
    research.yaml:21:5: steps[3].needs: unknown step 'outlin' (steps: outline, search)

Checks, in order: YAML syntax and duplicate keys (PyYAML's safe loader only —
no tags that build objects); the JSON Schema (``pipeline.schema.json``, Draft
2020-12, the file other tools can use too); then what a schema cannot say:
unique step ids, ``needs`` naming earlier steps, templates that parse, and
``steps.X`` read only from steps the reader waits for (directly or through
others), so a result is always there when a template reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mabeam.pipelines.template import TemplateProblem, templates_in

SCHEMA: dict[str, Any] = json.loads(resources.files("mabeam.pipelines").joinpath("pipeline.schema.json").read_text())
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_PARALLEL = 8
DEFAULT_ATTEMPTS = 1
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 30.0
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a pipeline file, at a place a person can find."""

    line: int
    column: int
    path: str
    message: str

    def render(self, source: str) -> str:
        """``source:line:column: path: message``."""
        where = f"{self.path}: " if self.path else ""
        return f"{source}:{self.line}:{self.column}: {where}{self.message}"


class PipelineError(ValueError):
    """A pipeline file that must not run; ``problems`` lists everything found, in file order."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        super().__init__("\n".join(p.render(source) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Retry:
    """How often a step is attempted and how long to wait in between (exponential, capped)."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...)."""
        return float(min(self.max_backoff, self.backoff * (2 ** max(0, attempt - 2))))


@dataclass(frozen=True, slots=True)
class Parallel:
    """A map over items: ``over`` gives the list, each item is bound to ``name``."""

    over: str
    name: str = "item"
    batch_size: int | None = None
    max_parallel: int = DEFAULT_MAX_PARALLEL


@dataclass(frozen=True)
class StepBody:
    """What a step does: its kind and the kind's fields (still templated)."""

    kind: str
    fields: dict[str, Any]
    timeout: float
    retry: Retry


@dataclass(frozen=True)
class Step:
    """One step of a pipeline."""

    id: str
    body: StepBody
    needs: tuple[str, ...]
    when: str | None = None
    parallel: Parallel | None = None
    fallback: StepBody | None = None


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline: steps in file order, each with its resolved ``needs``."""

    name: str
    steps: tuple[Step, ...]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: Any = None
    description: str = ""
    source: str = "<pipeline>"
    base_dir: Path | None = None
    document: dict[str, Any] = field(default_factory=dict)

    def step(self, step_id: str) -> Step:
        """The step with this id (KeyError if none)."""
        for item in self.steps:
            if item.id == step_id:
                return item
        raise KeyError(step_id)

    def resolve_inputs(self, given: dict[str, Any]) -> dict[str, Any]:
        """The run's inputs: given values over declared defaults; ValueError naming what is missing or unknown."""
        unknown = sorted(set(given) - set(self.inputs)) if self.inputs else []
        if unknown:
            raise ValueError(f"pipeline {self.name!r} has no input(s) {', '.join(unknown)} "
                             f"(declared: {', '.join(sorted(self.inputs)) or 'none'})")
        out = dict(given)
        missing = []
        for name, decl in self.inputs.items():
            if name not in out:
                if "default" in decl:
                    out[name] = decl["default"]
                else:
                    missing.append(name)
        if missing:
            raise ValueError(f"pipeline {self.name!r} needs input(s) {', '.join(sorted(missing))}")
        return out


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file (PipelineError with every problem, or the typed pipeline)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise PipelineError(str(path), [Problem(1, 1, "", f"file is {len(data)} bytes; the limit is {MAX_FILE_BYTES}")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PipelineError(str(path), [Problem(1, 1, "", f"not UTF-8 text ({error})")]) from None
    return parse_pipeline(text, source=str(path), base_dir=path.parent)


def parse_pipeline(text: str, source: str = "<pipeline>", base_dir: Path | None = None) -> Pipeline:
    """Check pipeline YAML text (see :func:`load_pipeline`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise PipelineError(source, [Problem(line, column, "", f"YAML: {error.problem}")]) from None
    except yaml.YAMLError as error:
        raise PipelineError(source, [Problem(1, 1, "", f"YAML: {error}")]) from None
    if root is None:
        raise PipelineError(source, [Problem(1, 1, "", "the file is empty")])
    locate = _Locator(root)
    problems = locate.duplicate_keys()
    for invalid in _VALIDATOR.iter_errors(document):
        problems.append(locate.problem(list(invalid.absolute_path), _schema_message(invalid)))
    if problems:
        raise PipelineError(source, problems)
    pipeline, problems = _typed(document, locate, source, base_dir)
    if problems:
        raise PipelineError(source, problems)
    return pipeline


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return str(error.message).replace("Additional properties are not allowed", "unknown field(s)")
    if error.validator in ("anyOf", "oneOf") and error.context:
        return "; or ".join(sorted({str(e.message) for e in error.context}))
    return str(error.message)


def _typed(doc: dict[str, Any], locate: _Locator, source: str,
           base_dir: Path | None) -> tuple[Pipeline, list[Problem]]:
    problems: list[Problem] = []
    defaults = doc.get("defaults", {})
    default_retry = defaults.get("retry", {})
    seen: dict[str, int] = {}
    steps: list[Step] = []
    for index, raw in enumerate(doc["steps"]):
        path: list[str | int] = ["steps", index]
        step_id = raw["id"]
        if step_id in seen:
            problems.append(locate.problem([*path, "id"], f"duplicate step id {step_id!r} (first at steps[{seen[step_id]}])"))
            continue
        needs: tuple[str, ...]
        if "needs" in raw:
            needs = tuple(raw["needs"])
            for k, need in enumerate(needs):
                if need not in seen:
                    known = ", ".join(seen) or "none before it"
                    problems.append(locate.problem([*path, "needs", k], f"unknown step {need!r} (steps: {known})"))
        else:
            needs = (steps[-1].id,) if steps else ()
        seen[step_id] = index
        body = _body(raw, defaults, default_retry)
        fallback = _body(raw["fallback"], defaults, default_retry) if "fallback" in raw else None
        parallel = None
        if "parallel" in raw:
            p = raw["parallel"]
            parallel = Parallel(over=p["over"], name=p.get("as", "item"), batch_size=p.get("batch_size"),
                                max_parallel=p.get("max_parallel", defaults.get("max_parallel", DEFAULT_MAX_PARALLEL)))
        steps.append(Step(id=step_id, body=body, needs=needs, when=raw.get("when"), parallel=parallel,
                          fallback=fallback))
    # Templates parse, and every steps.X they read is something the step waits for.
    waits = _transitive_needs(steps)
    for item in steps:
        index = seen[item.id]
        raw = doc["steps"][index]
        for key in [k for k in raw if k not in ("id", "kind", "needs", "description")]:
            try:
                templates = templates_in(raw[key])
            except TemplateProblem as error:
                problems.append(locate.problem(["steps", index, key], str(error)))
                continue
            for template in templates:
                for ref in sorted(template.references()):
                    if ref == item.id:
                        problems.append(locate.problem(["steps", index, key], f"a step cannot read its own output (steps.{ref})"))
                    elif ref not in seen:
                        problems.append(locate.problem(["steps", index, key], f"unknown step {ref!r} in a template"))
                    elif ref not in waits[item.id]:
                        problems.append(locate.problem(
                            ["steps", index, key],
                            f"reads steps.{ref} but does not wait for it; add {ref!r} to needs"))
    if "output" in doc:
        try:
            for template in templates_in(doc["output"]):
                for ref in sorted(template.references() - set(seen)):
                    problems.append(locate.problem(["output"], f"unknown step {ref!r} in a template"))
        except TemplateProblem as error:
            problems.append(locate.problem(["output"], str(error)))
    pipeline = Pipeline(name=doc["name"], steps=tuple(steps), inputs=doc.get("inputs", {}),
                        output=doc.get("output"), description=doc.get("description", ""), source=source,
                        base_dir=base_dir, document=doc)
    return pipeline, problems


def _body(raw: dict[str, Any], defaults: dict[str, Any], default_retry: dict[str, Any]) -> StepBody:
    retry_raw = {**default_retry, **raw.get("retry", {})}
    retry = Retry(attempts=retry_raw.get("attempts", DEFAULT_ATTEMPTS), backoff=retry_raw.get("backoff", DEFAULT_BACKOFF),
                  max_backoff=retry_raw.get("max_backoff", DEFAULT_MAX_BACKOFF))
    skip = {"id", "kind", "needs", "when", "parallel", "fallback", "retry", "timeout", "description"}
    fields = {k: v for k, v in raw.items() if k not in skip}
    if raw["kind"] == "model" and "model" not in fields and "model" in defaults:
        fields["model"] = defaults["model"]
    return StepBody(kind=raw["kind"], fields=fields, timeout=raw.get("timeout", defaults.get("timeout", DEFAULT_TIMEOUT)),
                    retry=retry)


def _transitive_needs(steps: list[Step]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in steps:  # needs only name earlier steps, so one pass in file order suffices
        closure: set[str] = set()
        for need in item.needs:
            closure.add(need)
            closure |= out.get(need, set())
        out[item.id] = closure
    return out


class _Locator:
    """Maps a JSON path in the document to the line and column of its YAML node."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root

    def node(self, path: list[str | int]) -> tuple[yaml.Node, str | None]:
        """The deepest node on ``path`` that exists, and the key that was missing below it (if any)."""
        node = self.root
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
                if match is None:
                    return node, str(part)
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return node, str(part)
        return node, None

    def problem(self, path: list[str | int], message: str) -> Problem:
        """A problem at ``path``, placed on its node's first line."""
        node, _missing = self.node(path)
        mark = node.start_mark
        return Problem(mark.line + 1, mark.column + 1, _path_text(path), message)

    def duplicate_keys(self) -> list[Problem]:
        """Keys given twice in one mapping (YAML allows it silently; we refuse it)."""
        problems: list[Problem] = []
        stack: list[tuple[yaml.Node, list[str | int]]] = [(self.root, [])]
        while stack:
            node, path = stack.pop()
            if isinstance(node, yaml.MappingNode):
                keys: set[str] = set()
                for key, value in node.value:
                    name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
                    if name in keys:
                        problems.append(Problem(key.start_mark.line + 1, key.start_mark.column + 1,
                                                _path_text(path), f"duplicate key {name!r}"))
                    keys.add(name)
                    stack.append((value, [*path, name]))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((value, [*path, i]) for i, value in enumerate(node.value))
        return problems


def _path_text(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
