"""mabeam.systemd (the sd_notify protocol's pure parts) and mabeam.logs (journald-friendly lines)."""

from __future__ import annotations

import io
import logging
import os

import pytest

from mabeam import logs, systemd

# --- sd_notify: addresses, watchdog period, status lines --------------------------------------


def test_notify_socket_addresses() -> None:
    assert systemd.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert systemd.socket_address("@sd-notify") == "\0sd-notify"  # abstract namespace
    assert systemd.socket_address("vsock:2:1234") is None


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "10000000"}, 5.0),  # half of WatchdogSec
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 5.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "43"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "ten"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval(env, pid=42) == expected


def test_status_is_one_bounded_line() -> None:
    assert systemd.clean_status("3 members,\n leader a") == "3 members, leader a"
    assert len(systemd.clean_status("x" * 1000)) == systemd.MAX_STATUS


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = systemd.Notifier.from_env({}, unset=False)
    assert not notifier.enabled and notifier.watchdog is None
    assert notifier.ready("serving") is False
    assert notifier.ping() is False and notifier.stopping() is False


def test_from_env_unsets_the_variables_so_children_do_not_inherit_them() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()),
           "OTHER": "kept"}
    notifier = systemd.Notifier.from_env(env)
    assert notifier.enabled and notifier.watchdog == 1.0
    assert env == {"OTHER": "kept"}


def test_a_missing_socket_is_reported_as_not_sent_never_raised() -> None:
    assert systemd.Notifier("/nonexistent/notify").ready("x") is False


# --- log lines ----------------------------------------------------------------------------------


def _line(formatter: logging.Formatter, message: str, *args: object, level: int = logging.INFO,
          exc_info: object = None, **extra: object) -> str:
    record = logging.LogRecord("meshd.node", level, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    record.__dict__.update(extra)
    return formatter.format(record)


def test_journal_lines_carry_priority_daemon_node_and_fields() -> None:
    formatter = logs.LineFormatter("meshd", "host-a", journal=True)
    line = _line(formatter, "joined cluster %s", "prod", level=logging.WARNING,
                 fields={"members": 3, "leader": "host b"})
    assert line == ('<4>level=warning daemon=meshd node=host-a logger=meshd.node msg="joined cluster prod" '
                    'members=3 leader="host b"')


def test_plain_lines_start_with_a_utc_timestamp() -> None:
    line = _line(logs.LineFormatter("agentd", "n1", fields={"worker": "w0"}), "up")
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z") and "T" in stamp
    assert rest == "level=info daemon=agentd node=n1 worker=w0 logger=meshd.node msg=up"


def test_a_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        line = _line(logs.LineFormatter("meshd", journal=True), "failed", level=logging.ERROR,
                     exc_info=sys.exc_info())
    assert "\n" not in line and line.startswith("<3>") and 'exc="Traceback' in line and "ValueError: boom" in line


def test_secrets_never_reach_a_line() -> None:
    secret = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    logs.register_secret(secret)
    line = _line(logs.LineFormatter("meshd"), "loaded key %s", secret,
                 fields={"curve_secret_key": "abc", "api_token": "t0k3n", "members": 2})
    assert secret not in line and "abc" not in line and "t0k3n" not in line
    assert "curve_secret_key=*** api_token=*** members=2" in line


def test_journal_stream_detection() -> None:
    stream = io.StringIO()
    assert not logs.stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})  # no file descriptor
    import tempfile

    with tempfile.TemporaryFile("w") as handle:
        stat = os.fstat(handle.fileno())
        assert logs.stderr_is_journal(handle, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not logs.stderr_is_journal(handle, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"})
        assert not logs.stderr_is_journal(handle, {})
