"""An S3 server for the storage tests: moto in server mode on 127.0.0.1, a free port, one per session.

``s3_server`` (a session fixture; import it into the test module) yields an ``S3Server``:
``.endpoint`` (the URL boto3 and flowmake's ``endpoint_url`` take), ``.env()`` (the standard
credential chain's variables for a subprocess: fake keys, a region, nothing from the host's
``~/.aws``), ``.client()`` (a boto3 client for the test's own puts and gets), ``.bucket()`` (a new,
empty bucket), and ``.requests`` (every request the server answered, as ``Request(method, bucket,
key)``): the tests count GETs of an object there, which is how "not downloaded again" is seen.

The request log wraps moto's WSGI application (``ThreadedMotoServer`` keeps it at
``_server.app``): moto itself keeps no per-object download count.
"""

from __future__ import annotations

import itertools
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import pytest

from tests.services import ServiceUnavailable, in_ci

ACCESS_KEY = "flowmake-test-key"
SECRET_KEY = "flowmake-test-secret"
REGION = "us-east-1"


def credentials_env() -> dict[str, str]:
    """What a flowmake subprocess gets: the standard chain's environment variables only, nothing
    from the host's ``~/.aws`` (both test S3 servers take these keys)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}


def client_for(endpoint: str) -> Any:
    """A boto3 S3 client for a test server, for the test's own puts and gets."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION)


@dataclass(frozen=True)
class Request:
    method: str
    bucket: str
    key: str
    addr: str = ""  # the client's address


class _Recorder:
    """WSGI middleware: notes (method, bucket, key) of every request, then lets moto answer."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.log: list[Request] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = urllib.parse.unquote(environ.get("PATH_INFO", ""))
        bucket, _, key = path.lstrip("/").partition("/")
        with self._lock:
            self.log.append(Request(environ.get("REQUEST_METHOD", ""), bucket, key, environ.get("REMOTE_ADDR", "")))
        return self.app(environ, start_response)


class S3Server:
    def __init__(self, ip_address: str = "127.0.0.1") -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as e:  # the test extra installs moto[server]
            raise ServiceUnavailable(f"moto[server] is not installed: {e}") from None
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address=ip_address, port=0, verbose=False)
        self._server.start()
        self._recorder = _Recorder(self._server._server.app)  # type: ignore[union-attr]
        self._server._server.app = self._recorder  # type: ignore[union-attr]
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._names = itertools.count()
        self._token = uuid.uuid4().hex[:8]

    def env(self) -> dict[str, str]:
        return credentials_env()

    def client(self) -> Any:
        return client_for(self.endpoint)

    def bucket(self) -> str:
        # moto keeps its buckets per process, not per server: each test module that imports the
        # fixture starts a server of its own over the same buckets, so names carry the server's.
        name = f"flowmake-test-{self._token}-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return name

    @property
    def requests(self) -> list[Request]:
        return list(self._recorder.log)

    def count(self, method: str, bucket: str, key: str | None = None) -> int:
        return sum(1 for r in self._recorder.log
                   if r.method == method and r.bucket == bucket and (key is None or r.key == key))

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        server = S3Server()
    except ServiceUnavailable as e:
        if in_ci():  # in CI a missing service is a broken machine, not a pass
            pytest.fail(e.reason)
        pytest.skip(e.reason)
    try:
        yield server
    finally:
        server.stop()
