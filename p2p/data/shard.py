"""The shard library's public API under its first name, for the tools that import
`p2p.data.shard.make_shards`. The library is p2p.data.shards; the command is p2p.cli.shard."""

from p2p.data.shards import ShardOptions, make_shards, read_manifest, shard_files

__all__ = ["ShardOptions", "make_shards", "read_manifest", "shard_files"]
