"""Durable runs: one unit of agent work, recorded as an append-only event log that is the only truth.

Layout: the pure cores (:mod:`~agentd.runs.model` records and errors,
:mod:`~agentd.runs.state` the state machine and write planner, :mod:`~agentd.runs.frames`
frame dedupe, :mod:`~agentd.runs.retention`, :mod:`~agentd.runs.upcasters`,
:mod:`~agentd.runs.validation`; the hash chain is :mod:`mabeam.runchain`) and the store
behind one interface (:mod:`~agentd.runs.store`; backends :mod:`~agentd.runs.sqlite`
and :mod:`~agentd.runs.postgres`, migrations in ``migrations/``). See docs/runs.md.
"""
