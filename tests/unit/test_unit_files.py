"""mabeam.dev.units reads unit files as systemd does (for the tests that start daemons from the units)."""

from __future__ import annotations

import pytest

from mabeam.dev.units import UnitError, exec_spec, parse_seconds, parse_unit, read_unit

UNIT = r"""
# a comment
; another
[Unit]
Description=demo

[Service]
Type=notify
Environment=A=1 "B=two words"
Environment=C=%n
ExecStart=-/opt/x/bin/daemon --name %N \
    --words $B --one ${B} \
    # a comment inside a continuation is skipped
    "--quoted arg" 100%%
User=svc
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=
RuntimeDirectory=x/one x/two
RuntimeDirectoryMode=0750
StateDirectory=x
WatchdogSec=1min 30s
UMask=0027
LimitNOFILE=1024
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
"""


def test_a_service_reads_as_systemd_would_start_it() -> None:
    spec = exec_spec(parse_unit(UNIT, "demo.service"))
    assert spec.argv == ["/opt/x/bin/daemon", "--name", "demo", "--words", "two", "words", "--one", "two words",
                         "--quoted arg", "100%"]
    assert spec.environment == {"A": "1", "B": "two words", "C": "demo.service"}
    assert (spec.type, spec.user, spec.group, spec.umask, spec.limit_nofile) == ("notify", "svc", "svc", 0o027, 1024)
    assert spec.drop_capabilities  # the empty assignment cleared the list
    assert spec.runtime_directories == [("/run/x/one", 0o750), ("/run/x/two", 0o750)]
    assert spec.state_directories == [("/var/lib/x", 0o755)]
    assert spec.watchdog_sec == 90.0
    assert spec.system_call_filter == ["@system-service", "~@privileged"]


def test_drop_ins_apply_after_the_unit(tmp_path) -> None:
    (tmp_path / "demo.service").write_text(UNIT)
    (tmp_path / "demo.service.d").mkdir()
    (tmp_path / "demo.service.d" / "10-watchdog.conf").write_text("[Service]\nWatchdogSec=2s\nEnvironment=A=3\n")
    spec = exec_spec(read_unit(tmp_path / "demo.service"))
    assert spec.watchdog_sec == 2.0 and spec.environment["A"] == "3"


@pytest.mark.parametrize(("text", "problem"), [
    ("[Service]\nExecStart=relative/path\n", "absolute path"),
    ("[Service]\nExecStart=/bin/x %z\n", "specifier %z"),
    ("[Service]\nExecStart=+/bin/x\n", "prefix"),
    ("[Service]\n", "one ExecStart"),
    ("no section=1\n", r"expected \[Section\]"),
])
def test_what_is_not_understood_is_refused_by_name(text: str, problem: str) -> None:
    with pytest.raises(UnitError, match=problem):
        exec_spec(parse_unit(text, "bad.service"))


@pytest.mark.parametrize(("span", "seconds"), [("10s", 10), ("500ms", 0.5), ("2", 2), ("1h", 3600), ("1min 1s", 61)])
def test_time_spans(span: str, seconds: float) -> None:
    assert parse_seconds(span) == seconds
