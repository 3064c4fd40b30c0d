"""Fitting GPU efficiency profiles to measurements (``kavier calibrate``).

    layouts.py     measurement files (the documented CSV layouts) as Observation records
    fit.py         a GPU's profile fitted to its observations, and the error of its predictions per source
    frameworks.py  a serving framework's CPU time per step, the GPU profiles held fixed
    load_sweep.py  the same from load points, each simulated with the engine
    serving_bench.py  the same from serving benchmarks' medians (sglang.bench_serving rows), each simulated
    closed_loop_bench.py  the same from closed-loop runs (aiperf --concurrency rows), each simulated
    report.py      calibrating from files: the catalogue of profiles written, the errors reported

What is fitted is the formula the engine runs (``specs.profiles.IterationTimer``).
"""
