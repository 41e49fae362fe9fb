"""Limits that both the config schema and the readers of untrusted files use, kept below both:
the image reader (p2p.data.images) applies its default when no config is at hand (`p2p shard`
workers, predict)."""

DEFAULT_MAX_PIXELS = 8192 * 8192  # data.max_pixels by default: 67M pixels, a 256 MB RGB decode
