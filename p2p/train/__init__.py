"""Training: `step` (one G+D update, returns loss tensors), `run` (builds a run: models,
optimizers, data, the eager or graphed step), `loop` (the run: resume, steps, log, sample,
validate, checkpoint), `checkpoint` (atomic save, exact resume), `wrap` (the one place that
applies device, SyncBN, channels_last, DDP through Accelerate and torch.compile), `graphs` (the
whole step captured in one CUDA graph, chosen by `run.use_cuda_graphs`), `logger` (rich,
metrics.jsonl, TensorBoard; `tensorboard` keeps its write errors from stopping a run) and
`position` (the data position when the world size changes). The `p2p train` command that starts
it is p2p.cli.train."""
