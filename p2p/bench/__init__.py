"""The benchmarks behind `p2p bench` (the command is p2p.cli.bench). Each suite measures the
seed-style baseline and p2p side by side in one run and returns its payload (environment,
config, rows with their baseline ratio). The suites are listed once, in p2p.specs.suites; each
has a module in p2p.bench.suites (its flags and its run) over the measuring module here
(data, decode, lab, step, ranks with ranks_worker under torchrun, profile, memory, scale,
all_bench with report, gpu_check).

common has the shared timer, environment record and JSON writer; workload the networks, sizes
and trainer batch the step benchmarks train on; photos the real images they use.
"""
