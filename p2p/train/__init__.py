"""Training: `step` (one G+D update, returns loss tensors), `loop` (the run: build, resume,
steps, log, sample, validate, checkpoint), `checkpoint` (atomic save, exact resume),
`wrap` (the one place that applies DDP, SyncBN, channels_last, compile, CUDA graphs),
`logger` (rich, metrics.jsonl, TensorBoard) and `entry` (the `p2p train` command)."""
