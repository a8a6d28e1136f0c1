"""A unit's seccomp switches without systemd: load the filters, then exec the daemon (tests only).

systemd turns ``SystemCallFilter=``, ``MemoryDenyWriteExecute=`` and
``RestrictAddressFamilies=`` into seccomp filters before it execs a service.
Test hosts (:mod:`mabeam.dev.hostroot`) have no systemd as PID 1, so this
wrapper does the same with libseccomp (through ctypes: it is on every host that
has systemd), one filter per switch as systemd installs them, and then execs
the rest of its command line. What the daemons then cannot do, they cannot do
under the real unit either::

    setpriv ... -- python -m mabeam.dev.sandbox --spec-file FILE -- env -i ... /opt/mabeam/bin/meshd ...

The spec (:func:`spec_for`) carries resolved system-call names: the groups
(``@system-service``) come from ``systemd-analyze syscall-filter``, so they
match the systemd of the machine.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
AF_MAX = 46
PR_SET_NO_NEW_PRIVS = 38


def scmp_act_errno(number: int) -> int:
    """libseccomp's SCMP_ACT_ERRNO(number)."""
    return 0x00050000 | (number & 0xFFFF)


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def resolve_groups(entries: Sequence[str]) -> set[str]:
    """System-call names of `entries` (``@group`` or a name), groups expanded by ``systemd-analyze syscall-filter``."""
    names: set[str] = set()
    for entry in entries:
        names |= _group(entry) if entry.startswith("@") else {entry}
    return names


@functools.cache
def _group(name: str) -> frozenset[str]:
    # One systemd-analyze run per group and process: a bed restarts daemons often.
    listing = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                             check=True).stdout
    members = [line.strip() for line in listing.splitlines()[1:] if line.strip() and not line.strip().startswith("#")]
    return frozenset(resolve_groups(members))


def spec_for(system_call_filter: Sequence[str], error: str, address_families: Sequence[str],
             memory_deny_write_execute: bool) -> dict[str, Any]:
    """The wrapper's spec from a unit's switches (ExecSpec fields), with every group resolved here."""
    allowed: set[str] | None = None
    denied: set[str] = set()
    for value in system_call_filter:  # systemd: the first entry decides allow- or deny-list; later ones add/remove
        deny = value.startswith("~")
        names = resolve_groups(value.lstrip("~").split())
        if allowed is None and not deny:
            allowed = set(names)
        elif deny:
            denied |= names
            if allowed is not None:
                allowed -= names
        else:
            assert allowed is not None
            allowed |= names
            denied -= names
    families = [int(getattr(socket, family)) for family in address_families if not family.startswith("~")]
    return {"allow": sorted(allowed) if allowed is not None else None, "deny": sorted(denied),
            "errno": getattr(errno, error, errno.EPERM) if error else errno.EPERM,
            "families": families, "mdwe": memory_deny_write_execute}


class Seccomp:
    """The few libseccomp calls the filters need."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        self.lib = ctypes.CDLL(name, use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                    ctypes.POINTER(_Arg)]

    def number(self, name: str) -> int:
        """The system call's number on this architecture, or a negative number when it has none."""
        return int(self.lib.seccomp_syscall_resolve_name(name.encode()))

    def filter(self, default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]) -> None:
        """Build and load one filter: `default` action, rules of (action, syscall, [(arg, op, a, b)])."""
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for action, name, conditions in rules:
                number = self.number(name)
                if number < 0:
                    continue  # not a system call on this architecture
                args = (_Arg * max(1, len(conditions)))(*[_Arg(*c) for c in conditions])
                rc = self.lib.seccomp_rule_add_array(ctx, action, number, len(conditions), args)
                if rc < 0:
                    raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")
            rc = self.lib.seccomp_load(ctx)
            if rc < 0:
                raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)


def apply(spec: dict[str, Any]) -> None:
    """Load the filters of `spec` into this process (kept across exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # what lets an unprivileged process load filters
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    seccomp = Seccomp()
    refuse = scmp_act_errno(int(spec["errno"]))
    if spec["mdwe"]:  # as systemd: no mapping both writable and executable, no making memory executable later
        eperm = scmp_act_errno(errno.EPERM)
        seccomp.filter(SCMP_ACT_ALLOW, [
            (eperm, "mmap", [(2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC)]),
            (eperm, "mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (eperm, "pkey_mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (eperm, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
        ])
    if spec["families"]:
        refused = scmp_act_errno(errno.EAFNOSUPPORT)
        rules = [(refused, "socket", [(0, SCMP_CMP_EQ, family, 0)])
                 for family in range(AF_MAX + 1) if family not in spec["families"]]
        rules.append((refused, "socket", [(0, SCMP_CMP_GT, AF_MAX, 0)]))
        seccomp.filter(SCMP_ACT_ALLOW, rules)
    # The system-call list last: it does not allow seccomp() itself, which loading a filter needs.
    if spec["allow"] is not None:
        seccomp.filter(refuse, [(SCMP_ACT_ALLOW, name, []) for name in spec["allow"]])
    elif spec["deny"]:
        seccomp.filter(SCMP_ACT_ALLOW, [(refuse, name, []) for name in spec["deny"]])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mabeam.dev.sandbox --spec JSON|--spec-file FILE -- COMMAND...``: load the filters, exec COMMAND."""
    parser = argparse.ArgumentParser(prog="python -m mabeam.dev.sandbox")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="JSON from spec_for()")
    source.add_argument("--spec-file", help="a file holding that JSON")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    if args.spec_file:
        with open(args.spec_file) as handle:
            args.spec = handle.read()
    apply(json.loads(args.spec))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

