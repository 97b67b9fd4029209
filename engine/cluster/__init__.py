"""The cluster (issue 24, docs/CLUSTER.md): partitions of the shard-key space, owned by engine
nodes through leases in a NATS JetStream key-value bucket.

natsserver  a nats-server process, or N of them clustered with JetStream, on loopback
partition   partition_of: the workers' shard-key hash, mod the partition count
leases      the lease protocol on the KV bucket (compare-and-set on the revision)
ownership   which partitions this node may serve, with the lease revision (fencing token)
agent       the lease agent: takes, renews and balances leases; a thread or a process
"""
