"""Offline scoring: the shards of a BatchInference.

`runner.run_shard` is one shard, what a pod of the BatchInference's Indexed Job runs (`slimserve batch`);
`local.run_batch_locally` runs every shard as that command on this machine, then writes the manifest. The
datasets (`datasets`), the split into shards (`sharding`), the mapping onto the model's inputs (`inputs`),
the parts and the manifest (`writers`, `output`) and the shard's status report (`progress`) are each a module.
"""
