"""Training on Slurm through submitit: the library behind `p2p submit`, `p2p jobs` and
`p2p cancel` (p2p.cli.submit parses their arguments and prints; nothing here does either).

    job         TrainJob, the picklable Checkpointable that runs on every task and requeues itself
    executor    the submitit executor for a config and the sbatch script it writes
    sweep       `--sweep key=v1,v2` items and the run name of each element
    submission  checking configs, then queueing one job or one array, with registry records
    registry    the jobs registry (one JSON line per job)
    sacct       states from sacct/squeue, last metrics, log tails
    ownership   whether the job Slurm has under an id is the one a registry row recorded
    jobs        the registry joined with Slurm's states, and cancelling (confirmed jobs only)

Rank, world size and master address inside the job come from `p2p.dist`, as for any srun task.
Jobs are named `p2p-<run.name>` so squeue/sacct listings show them too. Nothing is imported
here: unpickling a job on a node imports `p2p.slurm.job` and what it needs, no more.
"""
