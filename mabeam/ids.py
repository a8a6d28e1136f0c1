"""The one rule for identifiers that become etcd key segments: node ids, cluster names, tenants, roles, key ids.

Pure and dependency-free, so the SDK and ``meshctl`` check ids the way the daemons do.
"""

from __future__ import annotations

import re

#: Node ids, cluster names, tenants, roles and key ids: they become etcd key segments, so never ``/``.
ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
ID_RULE = "1-64 characters of letters, digits and _.-, starting with a letter, digit or _"
