"""HTTP on the member's URLs: the router others mount handlers on, the HTTP/1.1 server, and the
front that shares the client port with gRPC (see front.py for why and how)."""

from raftkv.api.http.conn import serve_connection, serve_http
from raftkv.api.http.front import ClientPortFront, internal_grpc_address
from raftkv.api.http.router import Handler, HttpRouter, Request, Response

__all__ = [
    "ClientPortFront",
    "Handler",
    "HttpRouter",
    "Request",
    "Response",
    "internal_grpc_address",
    "serve_connection",
    "serve_http",
]
