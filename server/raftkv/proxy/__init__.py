"""`raftkv grpc-proxy`: a stateless gRPC proxy in front of a raftkv (or etcd) cluster.

Run one on every machine that uses the cluster, and every local process reaches the cluster
at localhost: the proxy fails over between the cluster's members (`forward`), coalesces watches
of the same range into one upstream watch (`watch`) and keep-alives of the same lease into one
renewal (`lease`), caches serializable reads for a moment (`cache`) and can register itself so
clients discover proxies (`register`). It is a client of the cluster: it speaks only the etcd v3
wire protocol through `raftkv.client`, never server internals, so it works in front of etcd too.
"""

from raftkv.proxy.config import ProxyConfig, ServingTLS
from raftkv.proxy.server import GrpcProxy, run

__all__ = ["GrpcProxy", "ProxyConfig", "ServingTLS", "run"]
