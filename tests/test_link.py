"""The request/reply link: sequence numbers, same-seq retries, stale replies, errors, counters."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_sdk import protocol
from host_sdk.errors import ConfigError, NodeError, ProtocolError, TransportError
from host_sdk.link import Link, LinkStats
from host_sdk.protocol import Command, Status
from host_sdk.transport import open_transport, register_endpoint, unregister_endpoint


class Board:
    """A scripted board behind an ``emu://`` endpoint, speaking the real wire format.

    It executes each new seq once and answers repeats of the last seq from its reply cache, like
    the firmware. ``deaf`` requests are not heard at all; ``lose`` replies are executed but lost
    on the way back; ``noise(request)`` returns bytes sent before the real reply.
    """

    def __init__(self, address: int, *, deaf: int = 0, lose: int = 0,
                 noise: Callable[[protocol.Request], bytes] | None = None,
                 status: int = Status.OK, message: str = "") -> None:
        self.address = address
        self.deaf = deaf
        self.lose = lose
        self.noise = noise
        self.status = status
        self.message = message
        self.deframer = protocol.Deframer()
        self.heard: list[protocol.Request] = []
        self.executed: list[protocol.Request] = []
        self.replies: list[bytes] = []
        self.cache: tuple[int, bytes] | None = None

    def feed(self, data: bytes) -> bytes:
        out = b""
        for payload in self.deframer.feed(data):
            request = protocol.decode_request(payload)
            if self.deaf:
                self.deaf -= 1
                continue
            self.heard.append(request)
            if request.address != self.address:
                continue  # broadcasts and other boards' frames get no reply
            if self.cache is not None and self.cache[0] == request.seq:
                reply = self.cache[1]
            else:
                self.executed.append(request)
                if self.status == Status.OK:
                    result = {"echo": request.command, "n": len(self.executed)}
                    reply = protocol.encode_reply(request.seq, self.address, Status.OK, result)
                else:
                    reply = protocol.encode_reply(request.seq, self.address, self.status, self.message)
                self.cache = (request.seq, reply)
            if self.lose:
                self.lose -= 1
                continue
            prefix = self.noise(request) if self.noise else b""
            self.replies.append(prefix + reply)
            out += prefix + reply
        return out


@pytest.fixture
def board_link() -> Iterator[Callable[..., tuple[Board, Link]]]:
    names: list[str] = []
    links: list[Link] = []

    def make(board: Board, **kwargs: object) -> tuple[Board, Link]:
        name = f"test-link/{len(names)}"
        register_endpoint(name, board)
        names.append(name)
        link = Link(open_transport(f"emu://{name}"), **kwargs)  # type: ignore[arg-type]
        links.append(link)
        return board, link

    yield make
    for link in links:
        link.close()
    for name in names:
        unregister_endpoint(name)


def test_request_returns_result_and_counts_bytes(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(3), first_seq=100)
    assert link.request(3, Command.HELLO) == {"echo": 1, "n": 1}
    assert link.request(3, Command.STATUS, {"x": 1.5}) == {"echo": 10, "n": 2}
    assert [r.seq for r in board.heard] == [100, 101]
    assert board.heard[1].args == {"x": 1.5}
    sent = protocol.encode_request(100, 3, Command.HELLO, {}) + protocol.encode_request(
        101, 3, Command.STATUS, {"x": 1.5}
    )
    s = link.stats
    assert (s.requests, s.frames_sent, s.frames_received) == (2, 2, 2)
    assert s.bytes_sent == len(sent)
    assert s.bytes_received == sum(len(r) for r in board.replies)
    assert s.bytes_total == s.bytes_sent + s.bytes_received
    assert (s.retries, s.timeouts, s.stale, s.crc_errors, s.bad_frames, s.errors) == (0, 0, 0, 0, 0, 0)
    assert link.next_seq == 102


def test_golden_request_bytes() -> None:
    # [1, 7, 3, 1, {}] in msgpack, CRC32 little-endian, COBS, delimiter: checked by hand once.
    frame = protocol.encode_request(7, 3, Command.HELLO, {})
    payload = bytes([0x95, 0x01, 0x07, 0x03, 0x01, 0x80])
    import binascii

    body = payload + (binascii.crc32(payload) & 0xFFFFFFFF).to_bytes(4, "little")
    assert 0 not in body  # no zero: COBS is one code byte (len + 1) then the body
    assert frame == bytes([len(body) + 1]) + body + b"\x00"


def test_lost_reply_is_retried_with_the_same_seq(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(5, lose=2), first_seq=42)
    assert link.request(5, Command.UPDATE, {"step": 9}) == {"echo": 8, "n": 1}
    assert [r.seq for r in board.heard] == [42, 42, 42]
    assert len(board.executed) == 1  # answered from the cache, never executed twice
    s = link.stats
    assert (s.requests, s.frames_sent, s.retries, s.timeouts) == (1, 3, 2, 2)
    assert link.next_seq == 43


def test_unheard_request_is_retried(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(5, deaf=1), first_seq=0)
    assert link.request(5, Command.HELLO)["n"] == 1
    assert [r.seq for r in board.heard] == [0]
    assert (link.stats.retries, link.stats.timeouts, link.stats.frames_sent) == (1, 1, 2)


def test_stale_and_foreign_replies_are_ignored(board_link: Callable[..., tuple[Board, Link]]) -> None:
    def noise(request: protocol.Request) -> bytes:
        return (
            protocol.encode_reply(request.seq - 1, 6, Status.OK, {"old": True})  # an earlier seq
            + protocol.encode_reply(request.seq, 7, Status.OK, {"other": True})  # another board
            + protocol.encode_request(request.seq, 6, Command.HELLO, {})  # an echo of a request
        )

    board, link = board_link(Board(6, noise=noise), first_seq=10)
    assert link.request(6, Command.READ_OUTPUT, {"n": 4}) == {"echo": 6, "n": 1}
    s = link.stats
    assert (s.stale, s.bad_frames, s.frames_received, s.retries) == (2, 1, 4, 0)


def test_damaged_frames_are_counted(board_link: Callable[..., tuple[Board, Link]]) -> None:
    def noise(request: protocol.Request) -> bytes:
        good = protocol.encode_reply(request.seq, 2, Status.OK, {"k": 1.0})
        flipped = bytearray(good)
        flipped[3] ^= 0x40  # corrupt one byte: the CRC fails
        return bytes(flipped) + b"\x00\x00garbage\x00" + b"\x55" * 2000 + b"\x00"

    board, link = board_link(Board(2, noise=noise), first_seq=1)
    assert link.request(2, Command.STATUS)["echo"] == 10
    s = link.stats
    assert (s.crc_errors, s.oversize, s.frames_received, s.stale) == (2, 1, 1, 0)
    assert s.bytes_received == len(board.replies[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.binary(max_size=300), seq=st.integers(0, 2**32 - 1))
def test_garbage_never_passes_for_a_reply(
    board_link: Callable[..., tuple[Board, Link]], noise: bytes, seq: int
) -> None:
    # Any bytes ahead of the reply (closed by a delimiter) are dropped and counted, never
    # mistaken for the answer, and never cost a retry.
    board, link = board_link(Board(7, noise=lambda request: noise + b"\x00"), first_seq=seq)
    assert link.request(7, Command.HELLO) == {"echo": 1, "n": 1}
    s = link.stats
    assert (s.retries, s.timeouts, s.stale) == (0, 0, 0)
    assert s.bytes_received == len(board.replies[0]) == len(noise) + 1 + len(
        protocol.encode_reply(seq, 7, Status.OK, {"echo": 1, "n": 1}))


def test_error_status_raises_node_error(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(4, status=Status.BAD_ARGS, message="n must be 1..64"), name="bus A")
    with pytest.raises(NodeError) as info:
        link.request(4, Command.TARE, {"n": 0})
    e = info.value
    assert (e.status, e.address) == (Status.BAD_ARGS, 4)
    assert str(e) == "board 4 on bus A: TARE: BAD_ARGS: n must be 1..64"
    assert link.stats.errors == 1 and link.stats.retries == 0
    assert len(board.executed) == 1


def test_silent_board_names_board_and_port(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(9), first_seq=77, retries=2, timeout=0.25)
    with pytest.raises(TransportError) as info:
        link.request(8, Command.HELLO)  # nobody has address 8
    assert str(info.value) == (
        f"board 8 on {link.url} did not answer HELLO (seq 77) after 3 attempts of 0.25 s"
    )
    assert link.url.startswith("emu://test-link/")
    assert [r.seq for r in board.heard] == [77, 77, 77]
    s = link.stats
    assert (s.frames_sent, s.timeouts, s.retries) == (3, 3, 2)


def test_broadcast_sends_one_frame_and_expects_nothing(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(1), first_seq=5)
    link.broadcast(Command.SAMPLE, {"phase": 0, "step": 3})
    assert [(r.seq, r.address, r.command) for r in board.heard] == [(5, 255, Command.SAMPLE)]
    assert board.executed == []
    s = link.stats
    assert (s.broadcasts, s.frames_sent, s.bytes_sent, s.bytes_received) == (
        1, 1, len(protocol.encode_request(5, 255, Command.SAMPLE, {"phase": 0, "step": 3})), 0)
    # the next request uses the next seq
    link.request(1, Command.HELLO)
    assert board.heard[-1].seq == 6


def test_seq_wraps_at_2_pow_32(board_link: Callable[..., tuple[Board, Link]]) -> None:
    board, link = board_link(Board(1), first_seq=2**32 - 1)
    link.request(1, Command.HELLO)
    link.request(1, Command.HELLO)
    assert [r.seq for r in board.heard] == [2**32 - 1, 0]
    assert len(board.executed) == 2


def test_default_first_seq_is_random_with_a_fixed_width() -> None:
    seqs = set()
    for _ in range(20):
        link = Link(open_transport("loop://"))
        seqs.add(link.next_seq)
        assert 2**24 <= link.next_seq < 2**31
        link.close()
    assert len(seqs) > 15


def test_own_echo_on_loopback_is_not_a_reply() -> None:
    # loop:// returns the request itself: a valid frame but not a reply.
    link = Link(open_transport("loop://"), timeout=0.05, retries=1, first_seq=3)
    try:
        with pytest.raises(TransportError, match=r"^board 2 on loop:// did not answer STATUS \(seq 3\) after 2 attempts"):
            link.request(2, Command.STATUS)
        assert (link.stats.bad_frames, link.stats.timeouts) == (2, 2)
    finally:
        link.close()


def test_bad_arguments() -> None:
    t = open_transport("loop://")
    with pytest.raises(ConfigError, match="timeout"):
        Link(t, timeout=0)
    with pytest.raises(ConfigError, match="timeout"):
        Link(t, timeout=float("nan"))
    with pytest.raises(ConfigError, match="retries"):
        Link(t, retries=-1)
    with pytest.raises(ConfigError, match="first_seq"):
        Link(t, first_seq=2**32)
    link = Link(t, first_seq=1)
    with pytest.raises(ConfigError, match="use broadcast"):
        link.request(255, Command.HELLO)
    with pytest.raises(ConfigError):
        link.request(-1, Command.HELLO)
    with pytest.raises(ProtocolError):
        link.request(1, Command.HELLO, {"x": object()})
    assert link.stats.frames_sent == 0
    link.close()
    link.close()
    with pytest.raises(TransportError, match="is closed"):
        link.request(1, Command.HELLO)
    with pytest.raises(TransportError, match="is closed"):
        link.broadcast(Command.SAMPLE)


def test_stats_arithmetic() -> None:
    a = LinkStats(requests=3, bytes_sent=100, bytes_received=50)
    b = LinkStats(requests=1, bytes_sent=30, bytes_received=20, retries=2)
    assert (a - b).bytes_sent == 70 and (a - b).retries == -2
    assert (a + b).bytes_total == 200
    snap = a.copy()
    a.bytes_sent += 1
    assert snap.bytes_sent == 100
    assert a.as_dict()["bytes_total"] == 151


# ---- over a real pseudo-terminal ------------------------------------------------------------


class PtyBoard(threading.Thread):
    """A board on the master side of a pty: ignores the first request, then answers."""

    def __init__(self, master: int, address: int) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.address = address
        self.frames: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deframer = protocol.Deframer()
        import select

        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for payload in deframer.feed(data):
                self.frames.append(payload)
                request = protocol.decode_request(payload)
                if len(self.frames) == 1:
                    continue  # the first request is lost
                os.write(self.master, protocol.encode_reply(request.seq, self.address, Status.OK, {"got": len(self.frames)}))


def test_retry_over_a_pty() -> None:
    master, slave = os.openpty()
    board = PtyBoard(master, 12)
    board.start()
    link = Link(open_transport(f"serial://{os.ttyname(slave)}?baud=115200"), timeout=0.3, retries=2, first_seq=500)
    try:
        assert link.request(12, Command.HELLO) == {"got": 2}
        assert board.frames[0] == board.frames[1]  # byte-identical resend, same seq
        assert protocol.decode_request(board.frames[0]).seq == 500
        assert (link.stats.retries, link.stats.timeouts) == (1, 1)
        assert link.request(12, Command.STATUS) == {"got": 3}
        assert protocol.decode_request(board.frames[2]).seq == 501
    finally:
        board.stop.set()
        board.join()
        link.close()
        os.close(slave)
        os.close(master)
