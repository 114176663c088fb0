"""daemon.netwatch: parsing rtnetlink datagrams, debouncing, a real watch in a network namespace."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.daemon import netwatch
from relayd.daemon.netwatch import Event, Kind, NetworkWatch, parse

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
RT_TABLE_LOCAL = 255
RT_TABLE_COMPAT = 252
RTN_UNREACHABLE = 7
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254


# --- building datagrams the way the kernel lays them out --------------------------------------


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def nlmsg(kind: int, body: bytes, *, seq: int = 0, port: int = 0) -> bytes:
    header = struct.pack("=IHHII", 16 + len(body), kind, 0, seq, port)
    return _pad(header + body)


def rtattr(kind: int, payload: bytes) -> bytes:
    return _pad(struct.pack("=HH", 4 + len(payload), kind) + payload)


def packed(family: int, text: str) -> bytes:
    return socket.inet_pton(family, text)


def route(
    family: int,
    dst_len: int = 0,
    *,
    table: int = netwatch.RT_TABLE_MAIN,
    table_attr: int | None = None,
    kind: int = netwatch.RTN_UNICAST,
    gateway: str | None = None,
    oif: int | None = None,
    message: int = netwatch.RTM_NEWROUTE,
) -> bytes:
    body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, 3, 0, kind, 0)
    if table_attr is not None:
        body += rtattr(netwatch.RTA_TABLE, struct.pack("=I", table_attr))
    if dst_len:
        zero = "0.0.0.0" if family == AF_INET else "::"
        body += rtattr(1, packed(family, zero))  # RTA_DST
    if gateway is not None:
        body += rtattr(netwatch.RTA_GATEWAY, packed(family, gateway))
    if oif is not None:
        body += rtattr(netwatch.RTA_OIF, struct.pack("=I", oif))
    return nlmsg(message, body)


def address(
    family: int,
    text: str,
    *,
    prefix: int = 24,
    scope: int = RT_SCOPE_UNIVERSE,
    index: int = 2,
    flags: int = 0,
    flags_attr: int | None = None,
    message: int = netwatch.RTM_NEWADDR,
) -> bytes:
    body = struct.pack("=BBBBI", family, prefix, flags & 0xFF, scope, index)
    body += rtattr(netwatch.IFA_ADDRESS, packed(family, text))
    if family == AF_INET:
        body += rtattr(netwatch.IFA_LOCAL, packed(family, text))
    if flags_attr is not None:
        body += rtattr(netwatch.IFA_FLAGS, struct.pack("=I", flags_attr))
    return nlmsg(message, body)


def link(index: int, flags: int, *, message: int = netwatch.RTM_NEWLINK) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF)
    body += rtattr(3, b"eth0\0")  # IFLA_IFNAME
    return nlmsg(message, body)


UP_RUNNING = netwatch.IFF_UP | netwatch.IFF_RUNNING
V4_DEFAULT = route(AF_INET, gateway="192.0.2.254", oif=2)
V4_ADDRESS = address(AF_INET, "192.0.2.1")


# --- parse ------------------------------------------------------------------------------------


def test_new_ipv4_default_route() -> None:
    assert parse(V4_DEFAULT) == [Event(Kind.DEFAULT_ROUTE, AF_INET, 2, "192.0.2.254")]


def test_new_ipv6_default_route() -> None:
    data = route(AF_INET6, gateway="fe80::1", oif=3)
    assert parse(data) == [Event(Kind.DEFAULT_ROUTE, AF_INET6, 3, "fe80::1")]


def test_default_route_without_gateway() -> None:
    # ppp0, WireGuard: "default dev IF" is a default route too.
    assert parse(route(AF_INET, oif=7)) == [Event(Kind.DEFAULT_ROUTE, AF_INET, 7, "")]


def test_non_default_route_is_ignored() -> None:
    assert parse(route(AF_INET, 24, oif=2)) == []
    assert parse(route(AF_INET6, 64, oif=2)) == []


def test_default_route_outside_the_main_table_is_ignored() -> None:
    assert parse(route(AF_INET, table=RT_TABLE_LOCAL)) == []
    assert parse(route(AF_INET, table=RT_TABLE_COMPAT, table_attr=51820)) == []


def test_table_attribute_wins_over_the_truncated_byte() -> None:
    data = route(AF_INET6, table=RT_TABLE_COMPAT, table_attr=netwatch.RT_TABLE_MAIN)
    assert [e.kind for e in parse(data)] == [Kind.DEFAULT_ROUTE]


def test_unreachable_default_route_is_ignored() -> None:
    assert parse(route(AF_INET, kind=RTN_UNREACHABLE)) == []


def test_deleted_default_route_is_ignored() -> None:
    assert parse(route(AF_INET, gateway="192.0.2.254", message=netwatch.RTM_DELROUTE)) == []


def test_global_addresses() -> None:
    assert parse(V4_ADDRESS) == [Event(Kind.ADDRESS, AF_INET, 2, "192.0.2.1")]
    v6 = address(AF_INET6, "2001:db8::1", prefix=64, index=4)
    assert parse(v6) == [Event(Kind.ADDRESS, AF_INET6, 4, "2001:db8::1")]


def test_host_scope_addresses_are_ignored() -> None:
    assert parse(address(AF_INET, "127.0.0.1", prefix=8, scope=RT_SCOPE_HOST, index=1)) == []
    assert parse(address(AF_INET6, "::1", prefix=128, scope=RT_SCOPE_HOST, index=1)) == []
    assert parse(address(AF_INET, "198.51.100.7", prefix=32, scope=RT_SCOPE_HOST)) == []


def test_link_local_addresses_are_ignored() -> None:
    assert parse(address(AF_INET6, "fe80::1", prefix=64, scope=netwatch.RT_SCOPE_LINK)) == []
    # Whatever scope they were given, these never reach another network.
    assert parse(address(AF_INET6, "fe80::2", prefix=64)) == []
    assert parse(address(AF_INET, "169.254.10.20", prefix=16)) == []
    assert parse(address(AF_INET, "127.0.0.2", prefix=8)) == []


def test_tentative_ipv6_address_waits_for_dad() -> None:
    tentative = address(AF_INET6, "2001:db8::5", prefix=64, flags=netwatch.IFA_F_TENTATIVE)
    assert parse(tentative) == []
    in_attribute = address(AF_INET6, "2001:db8::5", prefix=64, flags_attr=netwatch.IFA_F_TENTATIVE)
    assert parse(in_attribute) == []
    done = address(AF_INET6, "2001:db8::5", prefix=64, flags_attr=0x100)  # IFA_F_NOPREFIXROUTE
    assert [e.kind for e in parse(done)] == [Kind.ADDRESS]


def test_deleted_address_is_ignored() -> None:
    assert parse(address(AF_INET, "192.0.2.1", message=netwatch.RTM_DELADDR)) == []


def test_links() -> None:
    assert parse(link(3, UP_RUNNING)) == [Event(Kind.LINK_UP, 0, 3)]
    assert parse(link(3, netwatch.IFF_UP)) == [Event(Kind.LINK_DOWN, 0, 3)]  # no carrier
    assert parse(link(3, UP_RUNNING, message=netwatch.RTM_DELLINK)) == [Event(Kind.LINK_DOWN, 0, 3)]
    assert parse(link(1, UP_RUNNING | netwatch.IFF_LOOPBACK)) == []


def test_overrun_message() -> None:
    assert parse(nlmsg(netwatch.NLMSG_OVERRUN, b"")) == [Event(Kind.OVERRUN)]


def test_several_messages_in_one_datagram() -> None:
    datagram = route(AF_INET, 24) + V4_ADDRESS + V4_DEFAULT + nlmsg(netwatch.NLMSG_NOOP, b"")
    assert [e.kind for e in parse(datagram)] == [Kind.ADDRESS, Kind.DEFAULT_ROUTE]


def test_done_ends_the_datagram() -> None:
    datagram = V4_ADDRESS + nlmsg(netwatch.NLMSG_DONE, struct.pack("=i", 0)) + V4_DEFAULT
    assert [e.kind for e in parse(datagram)] == [Kind.ADDRESS]


def test_truncated_datagrams() -> None:
    assert parse(b"") == []
    assert parse(V4_DEFAULT[:10]) == []  # not even a header
    assert parse(V4_DEFAULT[:-4]) == []  # the header promises more than there is
    assert [e.kind for e in parse(V4_ADDRESS + V4_DEFAULT[:20])] == [Kind.ADDRESS]


def test_malformed_messages() -> None:
    short_length = struct.pack("=IHHII", 8, netwatch.RTM_NEWROUTE, 0, 0, 0) + V4_DEFAULT
    assert parse(short_length) == []  # a length below the header's size cannot be stepped over
    assert parse(nlmsg(netwatch.RTM_NEWROUTE, b"\0\0\0")) == []  # body shorter than rtmsg
    assert parse(nlmsg(netwatch.RTM_NEWADDR, b"\x02")) == []
    assert parse(nlmsg(netwatch.RTM_NEWLINK, b"\0" * 8)) == []


def test_malformed_attributes_are_dropped_not_fatal() -> None:
    body = struct.pack("=BBBBBBBBI", AF_INET, 0, 0, 0, 254, 3, 0, 1, 0)
    body += struct.pack("=HH", 200, netwatch.RTA_GATEWAY) + b"\xc0\x00\x02\xfe"
    assert parse(nlmsg(netwatch.RTM_NEWROUTE, body)) == [Event(Kind.DEFAULT_ROUTE, AF_INET, 0, "")]
    body = struct.pack("=BBBBBBBBI", AF_INET, 0, 0, 0, 254, 3, 0, 1, 0)
    body += rtattr(netwatch.RTA_GATEWAY, b"\1\2\3") + rtattr(netwatch.RTA_OIF, b"\2\0")
    assert parse(nlmsg(netwatch.RTM_NEWROUTE, body)) == [Event(Kind.DEFAULT_ROUTE, AF_INET, 0, "")]


@given(st.binary(max_size=256))
def test_parse_never_raises(data: bytes) -> None:
    assert all(isinstance(event, Event) for event in parse(data))


@given(st.binary(max_size=64))
def test_parse_never_raises_on_garbage_after_a_valid_message(tail: bytes) -> None:
    assert parse(V4_ADDRESS + tail)[:1] == [Event(Kind.ADDRESS, AF_INET, 2, "192.0.2.1")]


# --- the watch, on a scripted socket -----------------------------------------------------------

KERNEL = (0, netwatch.GROUPS)
Step = tuple[bytes, object] | OSError


class ScriptedNetlink:
    """Stands in for the netlink socket: `recvfrom` replays a script.

    A real socket pair gives the event loop a file descriptor; one byte written to its other end
    makes it readable, and the final `recvfrom` consumes that byte so the reader goes quiet.
    """

    def __init__(self) -> None:
        self._inner, self._outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inner.setblocking(False)
        self.script: list[Step] = []
        self.closed = False

    def deliver(self, *steps: Step) -> None:
        self.script.extend(steps)
        self._outer.send(b"!")

    def fileno(self) -> int:
        return self._inner.fileno()

    def recvfrom(self, size: int) -> tuple[bytes, object]:
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, OSError):
                raise step
            return step
        while True:
            self._inner.recv(16)  # raises BlockingIOError once drained

    def close(self) -> None:
        self.closed = True
        self._inner.close()
        self._outer.close()


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedNetlink]:
    fake = ScriptedNetlink()
    monkeypatch.setattr(netwatch, "_open_socket", lambda: fake)
    yield fake
    if not fake.closed:
        fake.close()


def run_watch(
    scenario: Callable[[NetworkWatch, list[float]], Awaitable[None]], debounce: float = 0.05
) -> list[float]:
    """Run `scenario(watch, calls)` (a coroutine function) with a started watch; the call times."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        calls: list[float] = []
        watch = NetworkWatch(lambda: calls.append(loop.time()), debounce=debounce)
        assert watch.start(loop)
        try:
            await asyncio.wait_for(scenario(watch, calls), timeout=10)
        finally:
            watch.close()
        return calls

    return asyncio.run(main())


def test_a_burst_gives_one_call_after_the_debounce(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        scripted.deliver(
            (link(3, UP_RUNNING), KERNEL),
            (address(AF_INET6, "2001:db8::1", prefix=64, index=3), KERNEL),
            (V4_ADDRESS + route(AF_INET, 24), KERNEL),
            (V4_DEFAULT, KERNEL),
        )
        await asyncio.sleep(0.05)
        scripted.deliver((route(AF_INET6, gateway="fe80::1"), KERNEL))
        await asyncio.sleep(0.1)
        assert calls == []  # still inside the debounce window
        await asyncio.sleep(0.5)
        assert len(calls) == 1
        assert calls[0] - start >= 0.3
        scripted.deliver((V4_DEFAULT, KERNEL))  # a later change is not swallowed
        await asyncio.sleep(0.6)
        assert len(calls) == 2

    run_watch(scenario, debounce=0.3)


def test_nothing_relevant_gives_no_call(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver(
            (route(AF_INET, 24), KERNEL),
            (address(AF_INET6, "fe80::1", prefix=64, scope=netwatch.RT_SCOPE_LINK), KERNEL),
            (route(AF_INET, gateway="192.0.2.254", message=netwatch.RTM_DELROUTE), KERNEL),
            (link(3, netwatch.IFF_UP), KERNEL),
        )
        await asyncio.sleep(0.3)

    assert run_watch(scenario) == []


def test_overrun_counts_as_a_change(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver(OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS)))
        await asyncio.sleep(0.3)

    assert len(run_watch(scenario)) == 1


def test_datagrams_not_from_the_kernel_are_ignored(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver((V4_DEFAULT, (4242, 0)), (V4_ADDRESS, None))
        await asyncio.sleep(0.3)

    assert run_watch(scenario) == []


def test_garbage_does_not_break_the_reader(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver((b"\xff" * 37, KERNEL), (V4_DEFAULT[:-4], KERNEL))
        await asyncio.sleep(0.2)
        assert calls == []
        scripted.deliver((V4_DEFAULT, KERNEL))
        await asyncio.sleep(0.3)

    assert len(run_watch(scenario)) == 1


def test_links_count_when_they_turn_running(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver((link(3, UP_RUNNING), KERNEL))
        await asyncio.sleep(0.2)
        assert len(calls) == 1
        scripted.deliver((link(3, UP_RUNNING), KERNEL))  # e.g. a wireless event: still running
        await asyncio.sleep(0.2)
        assert len(calls) == 1
        scripted.deliver((link(3, netwatch.IFF_UP), KERNEL))  # carrier lost
        await asyncio.sleep(0.2)
        assert len(calls) == 1
        scripted.deliver((link(3, UP_RUNNING), KERNEL))  # and back
        await asyncio.sleep(0.2)
        assert len(calls) == 2

    run_watch(scenario)


def test_a_failing_socket_stops_the_watch_quietly(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver(OSError(errno.EBADF, "gone"), (V4_DEFAULT, KERNEL))
        await asyncio.sleep(0.2)
        assert scripted.closed

    assert run_watch(scenario) == []


def test_close_cancels_a_pending_call(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        scripted.deliver((V4_DEFAULT, KERNEL))
        await asyncio.sleep(0.05)
        watch.close()
        watch.close()
        await asyncio.sleep(0.4)

    assert run_watch(scenario, debounce=0.2) == []


def test_start_twice_is_a_bug(scripted: ScriptedNetlink) -> None:
    async def scenario(watch: NetworkWatch, calls: list[float]) -> None:
        with pytest.raises(RuntimeError):
            watch.start(asyncio.get_running_loop())

    run_watch(scenario)


# --- start() when netlink is unavailable -------------------------------------------------------


def _start_with(monkeypatch: pytest.MonkeyPatch, replacement: object) -> bool:
    """What `start` returns with `socket.socket` replaced (once the event loop has its own)."""

    async def main() -> bool:
        watch = NetworkWatch(lambda: None)
        with monkeypatch.context() as patch:
            patch.setattr(socket, "socket", replacement)
            started = watch.start(asyncio.get_running_loop())
        watch.close()
        return started

    return asyncio.run(main())


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "sandboxed"),
        OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT)),
        OSError(errno.EPROTONOSUPPORT, os.strerror(errno.EPROTONOSUPPORT)),
    ],
)
def test_start_returns_false_when_the_socket_is_refused(
    error: OSError, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise error

    with caplog.at_level("DEBUG", logger="relayd.daemon.netwatch"):
        assert _start_with(monkeypatch, refuse) is False
    assert "network watch unavailable" in caplog.text
    assert error.strerror is not None and error.strerror in caplog.text


def test_start_returns_false_when_joining_the_groups_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[RefusingBind] = []

    class RefusingBind:
        def __init__(self, *args: object) -> None:
            made.append(self)
            self.closed = False

        def setblocking(self, flag: bool) -> None:
            pass

        def setsockopt(self, *args: object) -> None:
            pass

        def bind(self, address: object) -> None:
            raise PermissionError(errno.EPERM, "no groups for you")

        def close(self) -> None:
            self.closed = True

    assert _start_with(monkeypatch, RefusingBind) is False
    assert len(made) == 1 and made[0].closed


def test_start_returns_false_without_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_NETLINK", raising=False)
    assert _start_with(monkeypatch, socket.socket) is False


def _netlink_refused() -> str | None:
    """Why this machine cannot open an rtnetlink socket, or None when it can."""
    if not hasattr(socket, "AF_NETLINK"):
        return "no netlink sockets on this platform"
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.bind((0, netwatch.GROUPS))
    except OSError as exc:
        return f"netlink socket refused here: {exc}"
    return None


def test_start_joins_the_groups_and_watches_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _netlink_refused()
    if reason:
        pytest.skip(reason)
    opened: list[socket.socket] = []
    real_open = netwatch._open_socket

    def recording_open() -> socket.socket | None:
        sock = real_open()
        if sock is not None:
            opened.append(sock)
        return sock

    monkeypatch.setattr(netwatch, "_open_socket", recording_open)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch = NetworkWatch(lambda: None)
        assert watch.start(loop) is True
        try:
            [sock] = opened
            # The kernel reports the multicast groups the socket has joined.
            port, groups = sock.getsockname()
            assert (port != 0, groups) == (True, netwatch.GROUPS)
            assert sock.getblocking() is False
            assert loop.remove_reader(sock.fileno()) is True  # True: the loop was reading it
        finally:
            watch.close()

    asyncio.run(main())


# --- end to end: a real watch in a private network namespace -----------------------------------

# Runs inside `unshare --net`: starts a watch, changes the namespace's network with `ip` and
# reports how many times on_up fired for each change. Addresses are documentation ranges
# (RFC 5737, RFC 3849) inside a namespace of our own: nothing leaves the machine.
CHILD = r"""
import asyncio, json, subprocess, sys
from relayd.daemon.netwatch import NetworkWatch

DEBOUNCE = 0.2
QUIET = DEBOUNCE + 1.0  # no call within this long: none is coming
WAIT = 5.0  # a call that should come comes within this long


def ip(*args):
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    return done.returncode == 0


def make_interface():
    if ip("link", "add", "d0", "type", "dummy") and ip("link", "set", "d0", "up"):
        return "dummy", "d0"
    if ip("link", "add", "v0", "type", "veth", "peer", "name", "v1"):
        if ip("link", "set", "v1", "up") and ip("link", "set", "v0", "up"):
            return "veth", "v0"
    if ip("link", "set", "lo", "up"):
        return "loopback", "lo"
    return None, None


async def main():
    loop = asyncio.get_running_loop()
    calls = []
    watch = NetworkWatch(lambda: calls.append(loop.time()), debounce=DEBOUNCE)
    if not watch.start(loop):
        return {"error": "NetworkWatch.start returned False"}

    async def count(*commands, expect):
        # The calls caused by `commands`; None when a command failed.
        before = len(calls)
        for command in commands:
            if not await asyncio.to_thread(ip, *command):
                return None
        began = loop.time()
        first = None
        while loop.time() - began < (WAIT if expect else QUIET):
            if first is None and len(calls) > before:
                first = loop.time()
            if first is not None and loop.time() - first >= QUIET:
                break
            await asyncio.sleep(0.02)
        return len(calls) - before

    result = {}
    kind, dev = await asyncio.to_thread(make_interface)
    if dev is None:
        return {"error": "could not bring up any interface"}
    result["interface"] = kind
    result["link"] = await count(expect=kind != "loopback")
    result["ignored"] = await count(
        ("addr", "add", "198.51.100.7/32", "dev", dev, "scope", "host"),
        ("route", "add", "198.51.100.0/24", "dev", dev),
        expect=False,
    )
    result["link_local_v6"] = await count(
        ("-6", "addr", "add", "fe80::1234/64", "dev", dev, "nodad"), expect=False
    )
    result["address"] = await count(("addr", "add", "192.0.2.1/24", "dev", dev), expect=True)
    result["default_route"] = await count(
        ("route", "add", "default", "via", "192.0.2.254", "dev", dev), expect=True
    )
    result["route_deleted"] = await count(("route", "del", "default"), expect=False)
    result["address_v6"] = await count(
        ("-6", "addr", "add", "2001:db8::1/64", "dev", dev, "nodad"), expect=True
    )
    if result["address_v6"] is not None:
        via = await count(("-6", "route", "add", "default", "via", "2001:db8::fe", "dev", dev),
                          expect=True)
        if via is None:
            via = await count(("-6", "route", "add", "default", "dev", dev), expect=True)
        result["default_route_v6"] = via
    watch.close()
    return result


print(json.dumps(asyncio.run(main())), flush=True)
"""


def _namespace_refused() -> str | None:
    """Why the end-to-end test cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "rtnetlink is Linux only"
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (Debian package {package})"
    probe = subprocess.run(
        ["unshare", "--net", "--", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return _netlink_refused()


def test_watch_sees_the_network_come_up_in_a_namespace(tmp_path: Path) -> None:
    reason = _namespace_refused()
    if reason:
        pytest.skip(reason)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    root = Path(netwatch.__file__).resolve().parents[2]  # relayd/daemon/netwatch.py
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(child)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    if result["interface"] != "loopback":
        assert result["link"] >= 1, result  # the link turning up and running
    assert result["ignored"] == 0, result  # host-scope address, non-default route
    assert result["link_local_v6"] in (0, None), result  # None: IPv6 disabled here
    assert result["address"] == 1, result  # one call for the address and its routes
    assert result["default_route"] == 1, result
    assert result["route_deleted"] == 0, result
    if result["address_v6"] is not None:
        assert result["address_v6"] == 1, result
        assert result["default_route_v6"] == 1, result
