"""A TDS responder on loopback: the real mssql-python (and the ODBC driver it bundles) talk to
it as to SQL Server, and what each statement does is decided by a fake server below the wire
(tests/sqlserver_fake.FakeSqlServer or tests/synapse_sql_fake.FakeSqlPool), which answers
the generated T-SQL as the server would.

What it assumes of SQL Server, and where that is documented (MS-TDS, [MS-TDS] section):
- PRELOGIN (2.2.6.5): it answers ENCRYPT_NOT_SUP, so with ``Encrypt=no`` the driver sends
  LOGIN7 and everything after it in clear (2.2.6.5, ENCRYPTION option: "encryption is not
  available"); ``Encrypt=yes`` is refused by the driver, as against a server without TLS.
- LOGIN7 (2.2.6.4): the password is checked; a wrong one gets error 18456 (state 1, severity
  14) and no LOGINACK, as SQL Server answers a failed login. A good one gets the ENVCHANGEs
  of the database, collation and packet size (2.2.7.9) and LOGINACK (2.2.7.14) for TDS 7.4.
- transactions (2.2.6.9, 2.2.7.9): the driver with autocommit off sends TM_BEGIN_XACT; the
  responder answers ENVCHANGE 8 with a new descriptor, TM_COMMIT_XACT / TM_ROLLBACK_XACT
  with ENVCHANGE 9 / 10 (and a new transaction when the request asks for one, fBeginXact);
  a commit that asks for none is the driver turning autocommit on, which the fake's session
  is then told (a dedicated SQL pool's session runs DDL only outside a transaction).
- SQL batches (2.2.6.7) and RPCs (2.2.6.6): ``sp_prepexec`` (procedure id 13) answers its
  handle as a RETURNVALUE after RETURNSTATUS (2.2.7.18, 2.2.7.17), ``sp_execute`` (12)
  re-runs a handle, ``sp_unprepare`` (15) forgets it, ``sp_executesql`` (10) runs once. The
  driver's ``@P1 .. @Pn`` become ``?`` again for the fake server.
- results (2.2.7.4, 2.2.7.19, 2.2.7.5-7): COLMETADATA and ROW tokens for the fake's rows,
  DONEINPROC / DONEPROC / DONE with row counts, DONE_ERROR after an ERROR token.
- errors (2.2.7.10, 2.2.7.13): an error is one ERROR token with the fake's number, state 1,
  severity 16; an external script's failure (39004) is sent as SQL Server sends it: 39004,
  then 39019 with the script's message and an INFO token with its STDERR (three records, of
  which drivers that keep one record show the first).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import struct
import threading
import traceback
from typing import Any

from tests.fakes.tds import wire

SP_EXECUTESQL, SP_PREPARE, SP_EXECUTE, SP_PREPEXEC, SP_UNPREPARE = 10, 11, 12, 13, 15
TM_BEGIN_XACT, TM_COMMIT_XACT, TM_ROLLBACK_XACT = 5, 7, 8
_MARKER = re.compile(r"N?'(?:[^']|'')*'|\[(?:[^\]]|\]\])*\]|--[^\n]*|/\*.*?\*/|@P\d+\b", re.S)


def qmark(sql: str) -> str:
    """The driver's ``@P1, @P2, ...`` back as ``?`` (outside literals, names and comments)."""
    return _MARKER.sub(lambda m: "?" if m.group(0).startswith("@P") else m.group(0), sql)


class Responder:
    """Listens on a free loopback port; one thread per client connection."""

    def __init__(self, server: Any, *, password: str, database: str = "scoring"):
        self.server = server
        self.password = password
        self.database = database
        self.requests: list[tuple[str, Any]] = []  # what arrived, for assertions
        self.failures: list[str] = []  # the responder's own bugs (a client then sees a reset)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []
        self._descriptors = itertools.count(1)
        self._handles = itertools.count(1)
        self._stopped = False
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for client in self._clients:  # a client that never said goodbye: its session ends here
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    # -- one client ------------------------------------------------------------------------
    def _serve(self, client: socket.socket) -> None:
        session = _Session(self, client)
        try:
            session.run()
        except (OSError, ConnectionError):
            pass
        except Exception:
            self.failures.append(traceback.format_exc())
        finally:
            session.end()
            with contextlib.suppress(OSError):
                client.close()


class _Session:
    def __init__(self, responder: Responder, client: socket.socket):
        self.responder = responder
        self.client = client
        self.connection: Any = None
        self.descriptor = b"\x00" * 8
        self.prepared: dict[int, str] = {}

    def send(self, *tokens: bytes) -> None:
        self.client.sendall(wire.packets(wire.REPLY, b"".join(tokens)))

    def end(self) -> None:
        if self.connection is not None:
            self.connection.close()  # the session ends: its transaction rolls back, its locks go

    def run(self) -> None:
        while True:
            message = wire.read_message(self.client)
            if message is None:
                return
            kind, payload = message
            if kind == wire.PRELOGIN:
                self.send(wire.prelogin_reply(wire.ENCRYPT_NOT_SUP))
            elif kind == wire.LOGIN7:
                if not self.login(wire.login7(payload)):
                    return
            elif kind == wire.TRANSACTION_MANAGER:
                self.transaction(payload)
            elif kind == wire.SQL_BATCH:
                sql = wire.sql_batch(payload)
                self.responder.requests.append(("batch", sql))
                self.send(*self.execute(sql, (), wire.DONE))
            elif kind == wire.RPC:
                self.send(*self.rpc(wire.rpc(payload)))
            elif kind == wire.ATTENTION:
                self.send(wire.done(status=0x20))  # DONE_ATTN
            else:
                self.send(wire.message(wire.ERROR, 0, f"unexpected packet type {kind}"), wire.done(status=2))

    def login(self, login: dict[str, str]) -> bool:
        self.responder.requests.append(("login", {k: v for k, v in login.items() if k != "password"}))
        if login["password"] != self.responder.password:
            self.send(
                wire.message(wire.ERROR, 18456, f"Login failed for user '{login['user']}'.", severity=14),
                wire.done(status=wire.DONE_ERROR),
            )
            return False
        self.connection = self.responder.server.connect()
        self.send(
            wire.envchange_text(1, login["database"] or self.responder.database, "master"),
            wire.envchange(7, bytes([5]) + wire.COLLATION, b"\x00"),
            wire.envchange_text(4, str(wire.PACKET_SIZE), str(wire.PACKET_SIZE)),
            wire.loginack(),
            wire.done(),
        )
        return True

    def transaction(self, payload: bytes) -> None:
        request, _ = wire.transaction_request(payload)
        self.responder.requests.append(("transaction", request))
        tokens: list[bytes] = []
        if request in (TM_COMMIT_XACT, TM_ROLLBACK_XACT):
            try:
                self.connection.commit() if request == TM_COMMIT_XACT else self.connection.rollback()
            except Exception as exc:  # a commit the fake refuses: its error, the transaction gone
                self.connection.rollback()
                tokens += self.errors(exc)
            tokens.append(wire.end_transaction(9 if request == TM_COMMIT_XACT else 10, self.descriptor))
            _, at = wire.skip_all_headers(payload)
            name_length = payload[at + 2]
            begin_again = len(payload) > at + 3 + 2 * name_length and payload[at + 3 + 2 * name_length]
            if begin_again:
                request = TM_BEGIN_XACT
            else:  # the driver turned autocommit on: no transaction until it asks for one
                self.connection.autocommit = True
        if request == TM_BEGIN_XACT:
            self.connection.autocommit = False
            self.descriptor = struct.pack("<Q", next(self.responder._descriptors))
            tokens.append(wire.begin_transaction(self.descriptor))
        failed = any(t[0] == wire.ERROR for t in tokens)
        self.send(*tokens, wire.done(status=wire.DONE_ERROR if failed else 0))

    def rpc(self, calls: list[tuple[int | str, list[tuple[str, int, Any]]]]) -> list[bytes]:
        tokens: list[bytes] = []
        for proc, params in calls:
            self.responder.requests.append(("rpc", (proc, [p[2] for p in params])))
            values = [p[2] for p in params]
            if proc == SP_PREPEXEC:
                handle = next(self.responder._handles)
                sql = qmark(values[2])
                self.prepared[handle] = sql
                tokens += self.execute(sql, tuple(values[3:]), wire.DONEINPROC)
                tokens += [wire.return_status(0), wire.return_int(0, "", handle), wire.done(wire.DONEPROC)]
            elif proc == SP_EXECUTE:
                tokens += self.execute(self.prepared[values[0]], tuple(values[1:]), wire.DONEINPROC)
                tokens += [wire.return_status(0), wire.done(wire.DONEPROC)]
            elif proc == SP_EXECUTESQL:
                tokens += self.execute(qmark(values[0]), tuple(values[2:]), wire.DONEINPROC)
                tokens += [wire.return_status(0), wire.done(wire.DONEPROC)]
            elif proc == SP_UNPREPARE:
                self.prepared.pop(values[0], None)
                tokens += [wire.return_status(0), wire.done(wire.DONEPROC)]
            else:
                tokens += [
                    wire.message(wire.ERROR, 2812, f"Could not find stored procedure '{proc}'."),
                    wire.done(wire.DONEPROC, status=wire.DONE_ERROR),
                ]
        return tokens

    def execute(self, sql: str, params: tuple[Any, ...], token: int) -> list[bytes]:
        """What the fake server answers ``sql`` with, as tokens; its refusal as ERROR tokens."""
        try:
            cursor = self.connection.cursor()
            cursor.execute(sql, params)
            columns = [d[0] for d in cursor.description] if cursor.description else []
            rows = cursor.fetchall() if columns else []
        except Exception as exc:
            # a batch whose first statement answered rows before a later one failed
            before = getattr(exc, "after_rows", None)
            answered: list[bytes] = []
            if before is not None:
                answered = [
                    *wire.result_set(*before),
                    wire.done(token, status=wire.DONE_MORE, count=len(before[1])),
                ]
            return [*answered, *self.errors(exc), wire.done(token, status=wire.DONE_ERROR)]
        if not columns:
            return [wire.done(token)]
        return [*wire.result_set(columns, rows), wire.done(token, count=len(rows))]

    def errors(self, exc: BaseException) -> list[bytes]:
        """The records SQL Server sends for the fake's refusal (see the module's docstring)."""
        number, text = getattr(exc, "server_message", (50000, str(exc)))
        if number == 39004:
            first, _, rest = text.partition("\n")
            stderr = rest.split("\n", 1)[-1] if rest.startswith("STDERR") else rest
            return [
                wire.message(wire.ERROR, 39004, first, procedure="sp_execute_external_script"),
                wire.message(wire.ERROR, 39019, f"An external script error occurred: \n{stderr}"),
                wire.message(wire.INFO, 0, f"STDERR message(s) from external script: \n{stderr}", severity=0),
            ]
        return [wire.message(wire.ERROR, number, text)]
