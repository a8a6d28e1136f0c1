"""agentd: the OTP-style agent runtime (behaviours, supervision trees, mailboxes, isolation).

What a caller does:

- define an agent type by subclassing :class:`agentd.behaviour.Agent` and put it on
  the allow-list (:class:`agentd.runtime.AgentRegistry`: ``register``, entry points
  in the ``mabeam.agents`` group, or ``agent_types`` in the daemon config);
- in-process: ``async with Runtime(registry) as rt`` and ``await rt.spawn(...)``;
- as a daemon: ``python -m agentd --config agentd.toml`` serves the gRPC
  AgentService (:mod:`agentd.service`) over worker processes (:mod:`agentd.workers`).

Layout: :mod:`agentd.supervision` is the pure restart decision; :mod:`agentd.process`,
:mod:`agentd.runtime` and :mod:`agentd.supervisor` are the asyncio shell; the store
and codecs persist checkpoints; ``worker``/``workers``/``ipc`` give process
isolation; ``service``/``daemon``/``config``/``metrics`` are the daemon. See docs/agentd.md.
"""
