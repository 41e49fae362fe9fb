"""Training: `step` (one G+D update, returns loss tensors), `loop` (the run: build, resume,
steps, log, sample, validate, checkpoint), `checkpoint` (atomic save, exact resume),
`wrap` (the one place that applies DDP, SyncBN, channels_last, compile, CUDA graphs),
`logger` (rich, metrics.jsonl, TensorBoard; `tensorboard` keeps its write errors from stopping
a run), `position` (the data position when the world size changes) and `entry` (the `p2p train`
command)."""
