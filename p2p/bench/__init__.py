"""The benchmarks behind `p2p bench` (the command is p2p.cli.bench). Each suite measures the
seed-style baseline and p2p side by side in one run and returns its payload (environment,
config, rows with their baseline ratio):

- data: input pipelines (wds, dali, folder) vs the per-image PIL + skimage baseline;
- lab: RGB->Lab, p2p batched vs skimage per image;
- step: training-step img/s, the baseline vs each optimisation (and MFU on GPU);
- scaling: weak scaling over processes (scaling_worker is its per-process entry under torchrun);
- profile: torch.profiler trace and top operators of a real run;
- all_bench: everything above into one folder, with report.md and plots (report).

common has the shared timer, environment record and JSON writer; workload the networks, sizes
and trainer batch the step benchmarks train on; photos the real images they use.
"""
