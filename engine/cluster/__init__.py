"""The cluster (issue 24, docs/CLUSTER.md): partitions of the shard-key space, owned by engine
nodes through leases in a NATS JetStream key-value bucket.

natsserver  a nats-server process, or N of them clustered with JetStream, on loopback
partition   partition_of: the workers' shard-key hash, mod the partition count
leases      the lease protocol on the KV bucket (compare-and-set on the revision)
ownership   which partitions this node may serve, with the lease revision (fencing token)
agent       the lease agent: takes, renews and balances leases; a thread or a process
control     the control bucket (halt, lists, account states) on a thread: watch, get, write
control_apply  a node's admin changes written to it, and every value applied on the node
node        `serve` with cluster: the ownership segment, the agent, the control plane
node_hooks  the node's metrics and admin commands (no nats import)
"""
