"""Experiments: the experiment file and its schema, the run pipeline, sweeps (OpenDC's opendc-experiments).

    experiment.py     read and check an experiment file (schemas/experiment.schema.json)
    engine_config.py  an experiment's serving setup as the engine's SimConfig
    serving.py        the experiment's serving section as a typed record (defaults from the engine's knobs)
    pipeline.py       `kavier run`: trace -> simulation -> OpenDC -> reports, in stages
    run_folder.py     a run's output folder: its markers, configuration hash, done check, experiment copy
    sweep.py          the cartesian product of experiment variations, run in parallel
    executor.py       many runs on a Dask cluster (local or remote): under `kavier sweep` and `kavier plan`
    plan_file.py      plan files (schemas/plan.schema.json) and the candidate experiments they ask
    plan.py           `kavier plan`: the search for the best configuration per objective, the Pareto front
    documents.py      which kind of input a file is (trace, experiment, sweep, plan, workload, ...)
    demo.py           the built-in demo's files

This layer calls every layer below it (reports, opendc, engine, workload,
specs, base) and is called only by the command line and the Python API.
"""
