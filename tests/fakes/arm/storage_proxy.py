"""The way from azure-ai-ml's blob uploads to Azurite.

azure-ai-ml builds the workspace storage's address itself, from the datastore's account name
and the cloud's storage suffix (``https://<account>.blob.core.windows.net``), and hands it to
azure-storage-blob with no way to pass a transport. So the real blob client is left as it is
and reaches Azurite the way a client behind a corporate proxy reaches Azure: through
``HTTPS_PROXY``. This loopback proxy answers ``CONNECT <account>.blob.core.windows.net:443``,
ends TLS with a certificate made for that name (the client trusts it through
``REQUESTS_CA_BUNDLE``), and relays the plain bytes to Azurite, which takes the production-
style ``Host`` header and finds the account in it. Nothing above the socket is changed: the
requests, their Shared Key signatures and Azurite's answers are the real ones.

Any other host is refused (the test would otherwise reach the internet).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

from tests.fakes.azurite import self_signed

STORAGE_SUFFIX = "blob.core.windows.net"


class StorageProxy:
    """``CONNECT``-only proxy on loopback: ``<account>.blob.core.windows.net:443`` -> Azurite."""

    def __init__(self, folder: Path, account: str, azurite_port: int):
        self.host = f"{account}.{STORAGE_SUFFIX}"
        self.azurite_port = azurite_port
        self.cert_path, key_path = self_signed(folder, self.host, stem="storage-")
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(self.cert_path, key_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.refused: list[str] = []
        self._closed = False
        self._open: set[socket.socket] = set()  # relayed connections, closed with the proxy
        self._open_lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop listening and end every relayed connection: the blob client keeps its
        connections alive, and Azurite waits for open connections before it exits."""
        self._closed = True
        self._listener.close()
        with self._open_lock:
            for connection in list(self._open):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._open.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = request_line.split(" ", 2)
            if method != "CONNECT" or target != f"{self.host}:443":
                self.refused.append(request_line)
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            secure = self._tls.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.azurite_port))
            with self._open_lock:
                self._open.update((secure, upstream))
            _relay(secure, upstream)
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            client.close()


def _relay(secure: ssl.SSLSocket, upstream: socket.socket) -> None:
    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (sink, source):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    back = threading.Thread(target=pump, args=(upstream, secure), daemon=True)
    back.start()
    pump(secure, upstream)
    back.join(timeout=30)
    upstream.close()
