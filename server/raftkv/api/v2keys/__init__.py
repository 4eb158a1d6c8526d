"""etcd's v2 keys API (`/v2/keys`, behind `--enable-v2`) emulated on the v3 store.

- `mapping`: where v2 nodes live in the v3 keyspace and how v3 data reads back as v2 JSON
  (pure, unit-tested alone);
- `store`: the v2 operations, each write one guarded v3 Txn through Raft;
- `v3`: the v3 calls they need, over gRPC to the member itself;
- `handler`: the HTTP edge (parameters, statuses, headers), mounted on the client router.
"""

from raftkv.api.v2keys.handler import V2KeysApi

__all__ = ["V2KeysApi"]
