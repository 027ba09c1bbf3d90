"""TDS 7.4 on the wire, the server's half: packets, the client's requests, the server's tokens.

Only what the responder needs, each part from the MS-TDS specification (section numbers in
the comments): the packet header (2.2.3.1), PRELOGIN (2.2.6.5), LOGIN7 (2.2.6.4), SQL batch
(2.2.6.7) and RPC requests (2.2.6.6) with ALL_HEADERS (2.2.5.3), the transaction manager
request (2.2.6.9), TYPE_INFO (2.2.5.4-2.2.5.6) of the types the driver binds, and the token
stream the server answers with (2.2.7): COLMETADATA, ROW, DONE/DONEPROC/DONEINPROC,
ENVCHANGE, ERROR, INFO, LOGINACK, RETURNSTATUS, RETURNVALUE.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import uuid
from collections.abc import Iterator
from typing import Any

# 2.2.3.1.1 packet types
SQL_BATCH, RPC, REPLY, TRANSACTION_MANAGER, LOGIN7, PRELOGIN, ATTENTION = (
    0x01,
    0x03,
    0x04,
    0x0E,
    0x10,
    0x12,
    0x06,
)
EOM = 0x01
HEADER = struct.Struct(">BBHHBB")
PACKET_SIZE = 4096

# 2.2.7 tokens
COLMETADATA, ROW, DONE, DONEPROC, DONEINPROC = 0x81, 0xD1, 0xFD, 0xFE, 0xFF
ENVCHANGE, ERROR, INFO, LOGINACK, RETURNSTATUS, RETURNVALUE = 0xE3, 0xAA, 0xAB, 0xAD, 0x79, 0xAC
DONE_MORE, DONE_ERROR, DONE_COUNT = 0x01, 0x02, 0x10

# 2.2.5.4 data types
INTN, BITN, FLTN, DECIMALN, NUMERICN, GUIDTYPE = 0x26, 0x68, 0x6D, 0x6A, 0x6C, 0x24
DATEN, TIMEN, DATETIME2N, DATETIMEOFFSETN, DATETIMN, MONEYN = 0x28, 0x29, 0x2A, 0x2B, 0x6F, 0x6E
BIGVARBINARY, BIGVARCHAR, BIGBINARY, BIGCHAR, NVARCHAR, NCHAR = 0xA5, 0xA7, 0xAD, 0xAF, 0xE7, 0xEF
INT1, BIT, INT2, INT4, INT8, FLT4, FLT8 = 0x30, 0x32, 0x34, 0x38, 0x7F, 0x3B, 0x3E
FIXED = {INT1: 1, BIT: 1, INT2: 2, INT4: 4, INT8: 8, FLT4: 4, FLT8: 8}
PLP_NULL = 0xFFFFFFFFFFFFFFFF
#: Latin1_General_CI_AS, the collation the responder announces and sends with text (2.2.5.1.2)
COLLATION = bytes([0x09, 0x04, 0xD0, 0x00, 0x34])


# -- packets -------------------------------------------------------------------------------------
def packets(kind: int, payload: bytes, size: int = PACKET_SIZE) -> bytes:
    """``payload`` as packets of at most ``size`` bytes, the last one marked end of message."""
    body = size - HEADER.size
    chunks = [payload[i : i + body] for i in range(0, len(payload), body)] or [b""]
    out = bytearray()
    for number, chunk in enumerate(chunks, start=1):
        status = EOM if number == len(chunks) else 0
        out += HEADER.pack(kind, status, HEADER.size + len(chunk), 0, number % 256, 0) + chunk
    return bytes(out)


def read_message(sock: Any) -> tuple[int, bytes] | None:
    """One whole message (its packets joined): (type, payload); None when the client left."""
    payload = bytearray()
    while True:
        header = _read_exactly(sock, HEADER.size)
        if header is None:
            return None
        kind, status, length, _, _, _ = HEADER.unpack(header)
        body = _read_exactly(sock, length - HEADER.size)
        if body is None:
            return None
        payload += body
        if status & EOM:
            return kind, bytes(payload)


def _read_exactly(sock: Any, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


# -- PRELOGIN (2.2.6.5) ---------------------------------------------------------------------------
ENCRYPT_NOT_SUP = 0x02


def prelogin_options(payload: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    at = 0
    while payload[at] != 0xFF:
        token, offset, length = struct.unpack_from(">BHH", payload, at)
        options[token] = payload[offset : offset + length]
        at += 5
    return options


def prelogin_reply(encryption: int) -> bytes:
    """VERSION (a SQL Server 2022 build), ENCRYPTION, INSTOPT, THREADID, MARS (off)."""
    values = [
        (0x00, bytes([16, 0]) + struct.pack(">H", 1000) + b"\x00\x00"),
        (0x01, bytes([encryption])),
        (0x02, b"\x00"),
        (0x03, b""),
        (0x04, b"\x00"),
    ]
    offset = 5 * len(values) + 1
    head, body = bytearray(), bytearray()
    for token, value in values:
        head += struct.pack(">BHH", token, offset + len(body), len(value))
        body += value
    return bytes(head) + b"\xff" + bytes(body)


# -- LOGIN7 (2.2.6.4) ----------------------------------------------------------------------------
def login7(payload: bytes) -> dict[str, str]:
    """The user name, password (de-obfuscated), application and database of a LOGIN7."""

    def field(index: int) -> bytes:
        offset, length = struct.unpack_from("<HH", payload, 36 + 4 * index)
        return payload[offset : offset + 2 * length]

    password = bytes((((b ^ 0xA5) & 0x0F) << 4) | (((b ^ 0xA5) & 0xF0) >> 4) for b in field(2))
    return {
        "hostname": field(0).decode("utf-16-le"),
        "user": field(1).decode("utf-16-le"),
        "password": password.decode("utf-16-le"),
        "app": field(3).decode("utf-16-le"),
        "database": field(8).decode("utf-16-le"),
    }


# -- requests ------------------------------------------------------------------------------------
def skip_all_headers(payload: bytes) -> tuple[bytes, int]:
    """(the transaction descriptor of ALL_HEADERS, the offset after them) (2.2.5.3)."""
    total = struct.unpack_from("<I", payload, 0)[0]
    at, descriptor = 4, b"\x00" * 8
    while at < total:
        length, kind = struct.unpack_from("<IH", payload, at)
        if kind == 2:
            descriptor = payload[at + 6 : at + 14]
        at += length
    return descriptor, total


def sql_batch(payload: bytes) -> str:
    _, at = skip_all_headers(payload)
    return payload[at:].decode("utf-16-le")


class Reader:
    def __init__(self, data: bytes, at: int = 0):
        self.data, self.at = data, at

    def take(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def b_varchar(self) -> str:
        return self.take(2 * self.unpack("B")).decode("utf-16-le")

    def done(self) -> bool:
        return self.at >= len(self.data)


def rpc(payload: bytes) -> list[tuple[int | str, list[tuple[str, int, Any]]]]:
    """The calls of an RPC request: (procedure id or name, [(name, status, value)])."""
    _, at = skip_all_headers(payload)
    r = Reader(payload, at)
    calls: list[tuple[int | str, list[tuple[str, int, Any]]]] = []
    while not r.done():
        length = r.unpack("H")
        proc: int | str = r.unpack("H") if length == 0xFFFF else r.take(2 * length).decode("utf-16-le")
        r.unpack("H")  # option flags
        params: list[tuple[str, int, Any]] = []
        while not r.done() and r.data[r.at] not in (0x80, 0xFF, 0xFE):
            name = r.b_varchar()
            status = r.unpack("B")
            params.append((name, status, value(r, type_info(r))))
        calls.append((proc, params))
        if not r.done():
            r.take(1)  # the batch separator between calls
    return calls


def transaction_request(payload: bytes) -> tuple[int, bytes]:
    """(request type, the transaction descriptor it names) of a TM request (2.2.6.9)."""
    descriptor, at = skip_all_headers(payload)
    return struct.unpack_from("<H", payload, at)[0], descriptor


def type_info(r: Reader) -> tuple[int, ...]:
    """TYPE_INFO as (type, length, precision, scale) (2.2.5.6); collations are read and dropped."""
    kind = r.unpack("B")
    if kind in FIXED:
        return (kind, FIXED[kind], 0, 0)
    if kind in (INTN, BITN, FLTN, GUIDTYPE, DATETIMN, MONEYN):
        return (kind, r.unpack("B"), 0, 0)
    if kind in (DECIMALN, NUMERICN):
        length, precision, scale = r.unpack("BBB")
        return (kind, length, precision, scale)
    if kind == DATEN:
        return (kind, 3, 0, 0)
    if kind in (TIMEN, DATETIME2N, DATETIMEOFFSETN):
        return (kind, 0, 0, r.unpack("B"))
    if kind in (BIGVARBINARY, BIGBINARY):
        return (kind, r.unpack("H"), 0, 0)
    if kind in (BIGVARCHAR, BIGCHAR, NVARCHAR, NCHAR):
        length = r.unpack("H")
        r.take(5)
        return (kind, length, 0, 0)
    raise ValueError(f"the responder does not read TDS type 0x{kind:02x}")


def value(r: Reader, info: tuple[int, ...]) -> Any:
    kind, length, _, scale = info
    if kind in FIXED:
        fmt = {INT1: "B", BIT: "B", INT2: "h", INT4: "i", INT8: "q", FLT4: "f", FLT8: "d"}[kind]
        return r.unpack(fmt)
    if kind in (BIGVARBINARY, BIGVARCHAR, NVARCHAR, BIGBINARY, BIGCHAR, NCHAR):
        if length == 0xFFFF:
            raw = _plp(r)
        else:
            size = r.unpack("H")
            raw = None if size == 0xFFFF else r.take(size)
        if raw is None:
            return None
        if kind in (NVARCHAR, NCHAR):
            return raw.decode("utf-16-le")
        if kind in (BIGVARCHAR, BIGCHAR):
            return raw.decode("latin-1")
        return raw
    size = r.unpack("B")
    if size == 0:
        return None
    raw = r.take(size)
    if kind == INTN:
        return int.from_bytes(raw, "little", signed=size > 1)
    if kind == BITN:
        return bool(raw[0])
    if kind == FLTN:
        return struct.unpack("<f" if size == 4 else "<d", raw)[0]
    if kind in (DECIMALN, NUMERICN):
        number = int.from_bytes(raw[1:], "little")
        return decimal.Decimal(number if raw[0] else -number).scaleb(-scale)
    if kind == GUIDTYPE:
        return uuid.UUID(bytes_le=raw)
    if kind == DATEN:
        return datetime.date(1, 1, 1) + datetime.timedelta(days=int.from_bytes(raw, "little"))
    if kind == DATETIME2N:
        ticks = int.from_bytes(raw[:-3], "little")
        days = int.from_bytes(raw[-3:], "little")
        return datetime.datetime(1, 1, 1) + datetime.timedelta(
            days=days, microseconds=ticks * 10 ** (6 - scale)
        )
    raise ValueError(f"the responder does not read TDS values of type 0x{kind:02x}")


def _plp(r: Reader) -> bytes | None:
    total = r.unpack("Q")
    if total == PLP_NULL:
        return None
    out = bytearray()
    while True:
        chunk = r.unpack("I")
        if chunk == 0:
            return bytes(out)
        out += r.take(chunk)


# -- the server's tokens (2.2.7) -----------------------------------------------------------------
def b_varchar(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return bytes([len(raw) // 2]) + raw


def us_varchar(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return struct.pack("<H", len(raw) // 2) + raw


def done(token: int = DONE, *, status: int = 0, count: int | None = None, command: int = 0xC1) -> bytes:
    if count is not None:
        status |= DONE_COUNT
    return struct.pack("<BHHQ", token, status, command, count or 0)


def envchange(kind: int, new: bytes, old: bytes) -> bytes:
    body = bytes([kind]) + new + old
    return struct.pack("<BH", ENVCHANGE, len(body)) + body


def envchange_text(kind: int, new: str, old: str) -> bytes:
    return envchange(kind, b_varchar(new), b_varchar(old))


def begin_transaction(descriptor: bytes) -> bytes:
    return envchange(8, bytes([8]) + descriptor, b"\x00")


def end_transaction(kind: int, descriptor: bytes) -> bytes:
    """kind 9: commit, 10: rollback (the old value is the ended transaction)."""
    return envchange(kind, b"\x00", bytes([8]) + descriptor)


def message(
    token: int,
    number: int,
    text: str,
    *,
    state: int = 1,
    severity: int = 16,
    server: str = "tdsp-tds",
    procedure: str = "",
    line: int = 1,
) -> bytes:
    """An ERROR (severity > 10) or INFO token (2.2.7.10, 2.2.7.13)."""
    body = (
        struct.pack("<iBB", number, state, severity)
        + us_varchar(text)
        + b_varchar(server)
        + b_varchar(procedure)
    )
    body += struct.pack("<i", line)
    return struct.pack("<BH", token, len(body)) + body


def loginack(server: str = "Microsoft SQL Server") -> bytes:
    body = bytes([1]) + bytes([0x74, 0x00, 0x00, 0x04]) + b_varchar(server) + bytes([16, 0, 0x03, 0xE8])
    return struct.pack("<BH", LOGINACK, len(body)) + body


def return_status(status: int) -> bytes:
    return struct.pack("<Bi", RETURNSTATUS, status)


def return_int(ordinal: int, name: str, number: int) -> bytes:
    """A RETURNVALUE of an int OUTPUT parameter (sp_prepexec's handle) (2.2.7.18)."""
    return (
        struct.pack("<BH", RETURNVALUE, ordinal)
        + b_varchar(name)
        + bytes([0x01])
        + struct.pack("<IH", 0, 0)
        + bytes([INTN, 4, 4])
        + struct.pack("<i", number)
    )


# -- result sets ---------------------------------------------------------------------------------
def column_type(values: list[Any]) -> str:
    """The SQL type a column's values are sent as (the fakes hand back Python values)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bit"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "bigint"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    if present and all(isinstance(v, bytes | bytearray | memoryview) for v in present):
        return "varbinary(max)"
    if present and all(isinstance(v, datetime.datetime) for v in present):
        return "datetime2"
    if present and all(isinstance(v, decimal.Decimal) for v in present):
        return "float"
    longest = max((len(str(v)) for v in present), default=0)
    return "nvarchar(4000)" if longest <= 4000 else "nvarchar(max)"


def colmetadata(columns: list[tuple[str, str]]) -> bytes:
    out = bytearray(struct.pack("<BH", COLMETADATA, len(columns)))
    for name, sql in columns:
        out += struct.pack("<IH", 0, 0x0001 | 0x0008)  # nullable, updateable unknown
        out += _type_info(sql) + b_varchar(name)
    return bytes(out)


def _type_info(sql: str) -> bytes:
    if sql == "bit":
        return bytes([BITN, 1])
    if sql == "bigint":
        return bytes([INTN, 8])
    if sql == "float":
        return bytes([FLTN, 8])
    if sql == "datetime2":
        return bytes([DATETIME2N, 7])
    if sql == "varbinary(max)":
        return bytes([BIGVARBINARY]) + struct.pack("<H", 0xFFFF)
    if sql == "nvarchar(max)":
        return bytes([NVARCHAR]) + struct.pack("<H", 0xFFFF) + COLLATION
    return bytes([NVARCHAR]) + struct.pack("<H", 8000) + COLLATION


def row(columns: list[tuple[str, str]], values: tuple[Any, ...]) -> bytes:
    out = bytearray([ROW])
    for (_, sql), cell in zip(columns, values, strict=True):
        out += _cell(sql, cell)
    return bytes(out)


def _cell(sql: str, cell: Any) -> bytes:
    if sql in ("bit", "bigint", "float", "datetime2") and cell is None:
        return b"\x00"
    if sql == "bit":
        return bytes([1, 1 if cell else 0])
    if sql == "bigint":
        return bytes([8]) + struct.pack("<q", int(cell))
    if sql == "float":
        return bytes([8]) + struct.pack("<d", float(cell))
    if sql == "datetime2":
        since = cell - datetime.datetime(1, 1, 1, tzinfo=cell.tzinfo)
        ticks = (since.seconds * 10**6 + since.microseconds) * 10
        return bytes([8]) + ticks.to_bytes(5, "little") + since.days.to_bytes(3, "little")
    if sql in ("varbinary(max)", "nvarchar(max)"):
        if cell is None:
            return struct.pack("<Q", PLP_NULL)
        raw = bytes(cell) if sql == "varbinary(max)" else str(cell).encode("utf-16-le")
        return (
            struct.pack("<QI", len(raw), len(raw)) + raw + struct.pack("<I", 0)
            if raw
            else struct.pack("<QI", 0, 0)
        )
    if cell is None:
        return struct.pack("<H", 0xFFFF)
    raw = str(cell).encode("utf-16-le")
    return struct.pack("<H", len(raw)) + raw


def result_set(columns: list[str], rows: list[tuple[Any, ...]]) -> Iterator[bytes]:
    typed = [(name, column_type([r[i] for r in rows])) for i, name in enumerate(columns)]
    yield colmetadata(typed)
    for values in rows:
        yield row(typed, values)
