"""Tools an agent offers a model: typed functions, supervised tasks, policy gates and receipts.

- :mod:`agentd.tools.registry` — ``@tool``, :class:`Tool`, :class:`ToolRegistry`
  (JSON Schema from pydantic), the settlement boundary and the tool error tree;
- :mod:`agentd.tools.task` — the task state machine (pure table);
- :mod:`agentd.tools.policy` — allow / deny / ask per tenant, agent and run (pure);
- :mod:`agentd.tools.receipts` — deterministic call ids, idempotency keys,
  redaction, bounded summaries and the receipt record (pure).

See docs/tools.md.
"""

from agentd.tools.policy import Decision, PolicyRule, Scope, Verdict, decide
from agentd.tools.registry import (
    Settlement,
    Tool,
    ToolArgumentError,
    ToolError,
    ToolOutputError,
    ToolRegistry,
    UnknownTool,
    make_tool,
    tool,
)
from agentd.tools.task import TaskEvent, TaskState

__all__ = [
    "Decision", "PolicyRule", "Scope", "Settlement", "TaskEvent", "TaskState", "Tool", "ToolArgumentError",
    "ToolError", "ToolOutputError", "ToolRegistry", "UnknownTool", "Verdict", "decide", "make_tool", "tool",
]
