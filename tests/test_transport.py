"""Transports by URL, on real pseudo-terminals, pyserial's loopback and in-process endpoints."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_sdk import protocol
from host_sdk.errors import ConfigError, TransportError
from host_sdk.transport import (
    EmuTransport,
    SerialTransport,
    SpyTransport,
    Transport,
    check_url,
    endpoint_names,
    open_transport,
    register_endpoint,
    unregister_endpoint,
)


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the master fd (the test plays the board) and the slave's path."""
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        try:
            os.close(master)
        except OSError:
            pass


def read_exactly(transport: Transport, n: int) -> bytes:
    """Read until ``n`` bytes arrived (a pty may split a write); b"" read means a timeout."""
    data = b""
    while len(data) < n:
        chunk = transport.read(2.0)
        assert chunk, f"timed out after {len(data)} of {n} bytes"
        data += chunk
    return data


def read_master(master: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += os.read(master, n - len(data))
    return data


ALL_BYTES = bytes(range(256))


class TestSerial:
    def test_binary_both_ways_through_a_pty(self, pty: tuple[int, str]) -> None:
        master, path = pty
        t = open_transport(f"serial://{path}?baud=115200")
        try:
            assert isinstance(t, SerialTransport)
            assert t.url == f"serial://{path}?baud=115200"
            # Every byte value, including \n, \r, 0x03 (Ctrl-C) and 0x11/0x13 (XON/XOFF),
            # must pass unchanged: the port is in raw mode.
            os.write(master, ALL_BYTES)
            assert read_exactly(t, 256) == ALL_BYTES
            t.write(ALL_BYTES[::-1])
            assert read_master(master, 256) == ALL_BYTES[::-1]
        finally:
            t.close()

    def test_read_returns_empty_on_timeout(self, pty: tuple[int, str]) -> None:
        _master, path = pty
        t = open_transport(path)  # a bare device path means serial://
        try:
            assert t.read(0.01) == b""
            assert t.read(0.0) == b""
        finally:
            t.close()

    def test_read_returns_everything_already_waiting(self, pty: tuple[int, str]) -> None:
        master, path = pty
        t = open_transport(f"serial://{path}")
        try:
            os.write(master, b"\x01\x02\x03\x00")
            os.write(master, b"\x05\x06")
            got = read_exactly(t, 6)
            assert got == b"\x01\x02\x03\x00\x05\x06"
        finally:
            t.close()

    def test_exclusive_open(self, pty: tuple[int, str]) -> None:
        _master, path = pty
        first = open_transport(path)
        try:
            with pytest.raises(TransportError, match=f"^cannot open serial port {re.escape(path)}: "):
                open_transport(f"serial://{path}")
        finally:
            first.close()
        # Once closed, the port can be opened again.
        again = open_transport(path)
        again.close()

    def test_missing_port(self) -> None:
        with pytest.raises(TransportError) as info:
            open_transport("serial:///dev/no-such-mnn-port?baud=9600")
        message = str(info.value)
        assert message.startswith("cannot open serial port /dev/no-such-mnn-port: ")
        assert "\n" not in message

    def test_closed_master_is_a_transport_error(self, pty: tuple[int, str]) -> None:
        master, path = pty
        t = open_transport(path)
        try:
            os.close(master)
            with pytest.raises(TransportError, match="cannot read from"):
                t.read(0.5)
        finally:
            t.close()

    def test_use_after_close(self, pty: tuple[int, str]) -> None:
        _master, path = pty
        t = open_transport(path)
        t.close()
        t.close()  # idempotent
        with pytest.raises(TransportError, match="is closed"):
            t.write(b"x")
        with pytest.raises(TransportError, match="is closed"):
            t.read(0.0)


class TestLoop:
    def test_bytes_written_are_read_back(self) -> None:
        t = open_transport("loop://")
        try:
            assert t.read(0.0) == b""
            t.write(ALL_BYTES)
            assert read_exactly(t, 256) == ALL_BYTES
            assert t.read(0.0) == b""
        finally:
            t.close()


class Upper:
    """A toy endpoint: answers every write with the upper-cased bytes."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        self.fed.append(data)
        return data.upper()


@pytest.fixture
def upper() -> Iterator[Upper]:
    endpoint = Upper()
    register_endpoint("test-upper/1", endpoint)
    try:
        yield endpoint
    finally:
        unregister_endpoint("test-upper/1")


class TestEmu:
    def test_write_feeds_the_endpoint_and_read_returns_its_answer(self, upper: Upper) -> None:
        t = open_transport("emu://test-upper/1")
        try:
            assert isinstance(t, EmuTransport)
            assert t.read(10.0) == b""  # nothing queued: returns at once
            t.write(b"ab")
            t.write(b"c\x00")
            assert upper.fed == [b"ab", b"c\x00"]
            assert t.read(0.0) == b"ABC\x00"
            assert t.read(0.0) == b""
        finally:
            t.close()

    def test_unknown_name_lists_the_known_ones(self, upper: Upper) -> None:
        with pytest.raises(TransportError) as info:
            open_transport("emu://nope")
        assert str(info.value) == (
            "no emulated endpoint emu://nope (known: "
            + ", ".join(endpoint_names())
            + ")"
        )
        assert "test-upper/1" in str(info.value)

    def test_one_reader_per_endpoint(self, upper: Upper) -> None:
        t = open_transport("emu://test-upper/1")
        with pytest.raises(TransportError, match="already open"):
            open_transport("emu://test-upper/1")
        t.close()
        open_transport("emu://test-upper/1").close()

    def test_registration_rules(self, upper: Upper) -> None:
        with pytest.raises(ConfigError, match="already registered"):
            register_endpoint("test-upper/1", Upper())
        register_endpoint("test-upper/1", upper)  # the same object again is harmless
        with pytest.raises(ConfigError, match="feed"):
            register_endpoint("test-nofeed", object())  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            register_endpoint("", upper)
        unregister_endpoint("test-never-registered")  # harmless


class TestUrls:
    @pytest.mark.parametrize(
        "url, fragment",
        [
            ("tcp://host:1", "unknown port URL scheme 'tcp'"),
            ("serial:///dev/x?baud=fast", "baud in port URL"),
            ("serial:///dev/x?baud=0", "baud in port URL"),
            ("serial:///dev/x?parity=N", "unknown option 'parity'"),
            ("serial:///dev/x?baud=9600&baud=4800", "given twice"),
            ("serial://", "names no device"),
            ("emu://", "names no endpoint"),
            ("loop://?logging=debug", "loop:// takes no options"),
            ("spy://", "wraps no inner URL"),
            ("spy://loop://?log=", "names no file"),
            ("spy://spy://loop://", "nests spy://"),
            ("", "non-empty string"),
        ],
    )
    def test_malformed(self, url: str, fragment: str) -> None:
        with pytest.raises(ConfigError) as info:
            check_url(url)
        assert fragment in str(info.value)
        with pytest.raises(ConfigError):
            open_transport(url)

    @pytest.mark.parametrize(
        "url",
        [
            "serial:///dev/ttyACM0?baud=115200",
            "/dev/ttyUSB3",
            "COM4",
            "emu://paper/3",
            "loop://",
            "spy://serial:///dev/ttyACM0?baud=9600&log=x.txt",
            "spy://emu://lattice-4x4",
        ],
    )
    def test_well_formed(self, url: str) -> None:
        check_url(url)


class TestSpy:
    def test_logs_decoded_frames_both_ways(self, tmp_path: Path, pty: tuple[int, str]) -> None:
        master, path = pty
        log = tmp_path / "traffic.txt"
        t = open_transport(f"spy://serial://{path}?baud=115200&log={log}")
        assert isinstance(t, SpyTransport)
        request = protocol.encode_request(7, 3, protocol.Command.HELLO, {})
        reply = protocol.encode_reply(7, 3, protocol.Status.OK, {"boots": 2, "ux": -0.049, "k": [137.5, 1e-07]})
        error = protocol.encode_reply(8, 3, protocol.Status.BAD_ARGS, "n must be positive")
        try:
            t.write(request)
            assert read_master(master, len(request)) == request  # the spy changes nothing
            os.write(master, reply + b"\x01\x02\x00" + error + b"\x09")
            got = read_exactly(t, len(reply) + 3 + len(error) + 1)
            assert got == reply + b"\x01\x02\x00" + error + b"\x09"
        finally:
            t.close()
        lines = log.read_text(encoding="utf-8").splitlines()
        assert lines[0] == f"# spy on serial://{path}?baud=115200"
        body = [re.sub(r"^ *\d+\.\d{6} ", "", line) for line in lines[1:]]
        assert all(re.match(r"^ *\d+\.\d{6} (->|<-) ", line) for line in lines[1:])
        assert body[0] == "-> REQ seq=7 addr=3 HELLO {}"
        assert body[1] == "<- REP seq=7 addr=3 OK {'boots': 2, 'k': [137.5, 1e-07], 'ux': -0.049}"
        assert body[2].startswith("<- RAW 010200 (")
        assert body[3] == "<- REP seq=8 addr=3 BAD_ARGS 'n must be positive'"
        assert body[4] == "<- PARTIAL 09"
        assert len(body) == 5

    def test_log_to_stderr_and_inner_options(
        self, upper: Upper, capsys: pytest.CaptureFixture[str]
    ) -> None:
        t = open_transport("spy://emu://test-upper/1")
        try:
            t.write(b"\x00")
            assert t.read(0.0) == b"\x00"
        finally:
            t.close()
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "# spy on emu://test-upper/1"
        assert re.match(r"^ *\d+\.\d{6} -> RAW 00 \(", err[1])
        assert re.match(r"^ *\d+\.\d{6} <- RAW 00 \(", err[2])

    def test_unopenable_log(self, tmp_path: Path) -> None:
        with pytest.raises(TransportError, match="cannot open spy log"):
            open_transport(f"spy://loop://?log={tmp_path}/missing/dir/log.txt")
