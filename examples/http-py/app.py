# An HTTP function in Python: a wasi:http/proxy component built by
# componentize-py (see examples/build.sh) from this module and the bindings it
# generates for the proxy world (the `wit_world` package).
#
# Routes, by path:
#   /              200 "hello from python, request N": N counts requests in
#                  this instance, so it is 1 whenever each request gets a fresh one
#   /env?name=X    200 with the value of environment variable X; 404 if unset
#   /args          200 with sys.argv joined by spaces
#   /file?path=P   200 with the contents of file P (through wasi:filesystem);
#                  404 if it cannot be read
#   /print         200; prints "py: stdout line" to stdout and
#                  "py: stderr line" to stderr
# Anything else is 404.
import os
import sys
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

requests = 0  # in this instance


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global requests
        requests += 1
        url = urlsplit(request.path_with_query() or "/")
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        status, body = route(url.path, query)
        respond(response_out, status, body)


def route(path: str, query: dict[str, str]) -> tuple[int, bytes]:
    if path == "/":
        return 200, f"hello from python, request {requests}\n".encode()
    if path == "/env":
        value = os.environ.get(query.get("name", ""))
        return (404, b"not set\n") if value is None else (200, value.encode())
    if path == "/args":
        return 200, " ".join(sys.argv).encode()
    if path == "/file":
        try:
            with open(query.get("path", ""), "rb") as f:
                return 200, f.read()
        except OSError as e:
            return 404, f"{e}\n".encode()
    if path == "/print":
        print("py: stdout line", flush=True)
        print("py: stderr line", file=sys.stderr, flush=True)
        return 200, b"printed\n"
    return 404, b"not found\n"


def respond(response_out: ResponseOutparam, status: int, body: bytes) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with outgoing.write() as stream:
        # blocking-write-and-flush takes at most 4096 bytes per call.
        for i in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[i : i + 4096])
    OutgoingBody.finish(outgoing, None)
