"""agentd: the OTP-style agent runtime (behaviours, supervision trees, mailboxes, isolation)."""
