"""Notice the network coming back (Linux rtnetlink) so the daemon can retry offline mail at once.

The kernel multicasts a message for every address, route and link change. A new default route
in the main table, a new usable global address, or a link becoming up and running means the
machine may be online again; `NetworkWatch` coalesces a burst of those into one `on_up()` call.
Where netlink is unavailable (not Linux, a sandbox refusing the socket) `start` returns False
and the daemon relies on its periodic scan and the contrib/ dispatcher hooks instead.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("relayd.daemon.netwatch")

# <linux/netlink.h> and <linux/rtnetlink.h>; netlink structures are in host byte order.
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_NEWROUTE = 24
RTM_DELROUTE = 25

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_LINK = 253  # RT_SCOPE_HOST (254) and RT_SCOPE_NOWHERE (255) are above it
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15  # the full table id; rtm_table holds only its low byte (or RT_TABLE_COMPAT)
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8  # the full 32-bit flags; ifa_flags holds only the low byte
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
_NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
_RTATTR = struct.Struct("=HH")  # length, type
_U32 = struct.Struct("=I")

RECEIVE_SIZE = 65536  # larger than any rtnetlink notification datagram
RECEIVE_BUFFER = 1 << 20  # socket buffer asked for: a network coming up is a burst of messages
MAX_DATAGRAMS_PER_WAKEUP = 512  # a flood must not starve the event loop; the rest come next turn


class Kind(enum.Enum):
    DEFAULT_ROUTE = "default route"
    ADDRESS = "address"
    LINK_UP = "link up"
    LINK_DOWN = "link down"
    OVERRUN = "overrun"


@dataclass(frozen=True)
class Event:
    """One netlink notification that matters for connectivity."""

    kind: Kind
    family: int = 0  # socket.AF_INET or AF_INET6 for routes and addresses, else 0
    ifindex: int = 0  # 0 when the message names no interface
    address: str = ""  # the new address, or a default route's gateway; "" when absent


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(body: bytes, offset: int) -> dict[int, bytes]:
    """The rtattr list of a message body from `offset`; stops quietly at a malformed one."""
    attributes: dict[int, bytes] = {}
    while len(body) - offset >= _RTATTR.size:
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size or offset + length > len(body):
            break
        attributes.setdefault(kind & _NLA_TYPE_MASK, body[offset + _RTATTR.size : offset + length])
        offset += _align(length)
    return attributes


def _u32(raw: bytes | None, default: int) -> int:
    if raw is None or len(raw) != _U32.size:
        return default
    value: int = _U32.unpack(raw)[0]
    return value


_ADDRESS_SIZES = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}


def _address_text(family: int, raw: bytes | None) -> str:
    if raw is None or len(raw) != _ADDRESS_SIZES.get(family):
        return ""
    return socket.inet_ntop(family, raw)


def _new_route(body: bytes) -> Event | None:
    """A default route in the main table, else None (other tables are policy routing, VPNs)."""
    if len(body) < _RTMSG.size:
        return None
    family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = _RTMSG.unpack_from(body)
    # unreachable/blackhole/prohibit defaults are unicast's opposite: they mean "offline".
    if dst_len != 0 or kind != RTN_UNICAST or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attributes = _attributes(body, _RTMSG.size)
    if _u32(attributes.get(RTA_TABLE), table) != RT_TABLE_MAIN:
        return None
    gateway = _address_text(family, attributes.get(RTA_GATEWAY))
    return Event(Kind.DEFAULT_ROUTE, family, _u32(attributes.get(RTA_OIF), 0), gateway)


def _usable_address(text: str) -> bool:
    """False for addresses that never reach another network, whatever scope they were given."""
    if not text:
        return True  # no address attribute: trust the scope
    address = ipaddress.ip_address(text)
    return not (address.is_link_local or address.is_loopback)


def _new_address(body: bytes) -> Event | None:
    """A global address ready for use, else None (host and link scopes, tentative IPv6)."""
    if len(body) < _IFADDRMSG.size:
        return None
    family, _prefix, flags, scope, index = _IFADDRMSG.unpack_from(body)
    if scope >= RT_SCOPE_LINK or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attributes = _attributes(body, _IFADDRMSG.size)
    # A tentative IPv6 address cannot be used until duplicate address detection ends; the
    # kernel sends RTM_NEWADDR again when it does.
    if _u32(attributes.get(IFA_FLAGS), flags) & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
        return None
    text = _address_text(family, attributes.get(IFA_LOCAL) or attributes.get(IFA_ADDRESS))
    if not _usable_address(text):
        return None
    return Event(Kind.ADDRESS, family, index, text)


def _link(body: bytes, deleted: bool) -> Event | None:
    """A non-loopback link's state: up and running, or not (None for loopback links)."""
    if len(body) < _IFINFOMSG.size:
        return None
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    if flags & IFF_LOOPBACK:
        return None
    running = not deleted and flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING
    return Event(Kind.LINK_UP if running else Kind.LINK_DOWN, 0, index)


def _message(kind: int, body: bytes) -> Event | None:
    if kind == RTM_NEWROUTE:
        return _new_route(body)
    if kind == RTM_NEWADDR:
        return _new_address(body)
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        return _link(body, deleted=kind == RTM_DELLINK)
    if kind == NLMSG_OVERRUN:
        return Event(Kind.OVERRUN)
    return None  # deletions of routes and addresses, errors, no-ops: nothing came up


def parse(data: bytes) -> list[Event]:
    """The events in one netlink datagram; never raises, stops at the first malformed message."""
    events: list[Event] = []
    offset = 0
    while len(data) - offset >= _NLMSGHDR.size:
        length, kind, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            log.debug("netlink: malformed message at byte %d of %d, ignored", offset, len(data))
            break
        if kind == NLMSG_DONE:
            break
        event = _message(kind, data[offset + _NLMSGHDR.size : offset + length])
        if event is not None:
            events.append(event)
        offset += _align(length)
    return events


def _open_socket() -> socket.socket | None:
    """A non-blocking rtnetlink socket joined to the address, route and link groups, or None."""
    family = getattr(socket, "AF_NETLINK", None)
    protocol = getattr(socket, "NETLINK_ROUTE", 0)
    if family is None:
        log.debug("network watch unavailable: no netlink sockets on this platform")
        return None
    try:
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    except OSError as exc:
        log.debug("network watch unavailable: cannot open a netlink socket: %s", exc)
        return None
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, GROUPS))
    except OSError as exc:
        sock.close()
        log.debug("network watch unavailable: cannot join the rtnetlink groups: %s", exc)
        return None
    return sock


def _from_kernel(sender: object) -> bool:
    """Notifications come from port 0; another local process could send us anything."""
    return isinstance(sender, tuple) and len(sender) >= 1 and sender[0] == 0


class NetworkWatch:
    """Calls `on_up()` (from the event loop) when a default route or a global address appears.

    A link turning up and running counts too: with a static configuration, plugging the cable
    back in brings no new address or route. A burst of events (a network coming up emits many)
    gives one call, `debounce` seconds after its first event. A receive overrun (ENOBUFS: events
    were lost) counts as an event, since what was lost may have been the network coming up.
    """

    def __init__(self, on_up: Callable[[], None], *, debounce: float = 1.0) -> None:
        self._on_up = on_up
        self._debounce = debounce
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._pending: asyncio.TimerHandle | None = None
        # Links last seen up and running. A link not seen yet counts when first seen running:
        # at worst one needless retry per link after start.
        self._running: set[int] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Watch from now on; False (the reason logged at debug) when netlink is unavailable."""
        if self._sock is not None:
            raise RuntimeError("NetworkWatch already started")
        sock = _open_socket()
        if sock is None:
            return False
        self._loop, self._sock = loop, sock
        loop.add_reader(sock.fileno(), self._on_readable)
        log.debug("watching rtnetlink for default routes, addresses and links")
        return True

    def close(self) -> None:
        """Stop watching; a pending `on_up` call is cancelled. Safe to call more than once."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None

    def _on_readable(self) -> None:
        """Drain the datagrams waiting (bounded); never raises for what the socket delivers."""
        for _ in range(MAX_DATAGRAMS_PER_WAKEUP):
            if self._sock is None:
                return
            try:
                data, sender = self._sock.recvfrom(RECEIVE_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._changed("receive overrun, events lost")
                    continue
                # Anything else would repeat at every wake-up: give up watching; the daemon's
                # periodic scan still retries the mail.
                log.warning("network watch stopped: netlink receive failed: %s", exc)
                self.close()
                return
            if _from_kernel(sender):
                self._apply(parse(data))
            else:
                log.debug("netlink: datagram from %r (not the kernel) ignored", sender)

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if self._counts(event):
                self._changed(f"{event.kind.value} {event.address} (interface {event.ifindex})")

    def _counts(self, event: Event) -> bool:
        """Whether `event` may mean connectivity; links count only on turning up and running."""
        if event.kind is Kind.LINK_DOWN:
            self._running.discard(event.ifindex)
            return False
        if event.kind is Kind.LINK_UP:
            if event.ifindex in self._running:
                return False  # flag or statistics updates on a link that was already running
            self._running.add(event.ifindex)
        return True

    def _changed(self, reason: str) -> None:
        log.debug("network change: %s", reason)
        if self._pending is None and self._loop is not None:
            self._pending = self._loop.call_later(self._debounce, self._fire)

    def _fire(self) -> None:
        self._pending = None
        log.info("network change: the network may be back")
        self._on_up()
