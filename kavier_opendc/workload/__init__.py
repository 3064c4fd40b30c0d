"""Input C, the prompt trace: trace readers, synthetic workloads, prompt identities for prefix caching.

load.py           one entry point: a trace file or a synthetic workload description
trace.py          the in-memory Trace and the readers of every trace layout (pyarrow alone, pandas for the rest)
synthetic.py      synthetic traces: arrival processes, lengths, sessions, prefix hashes
distributions.py  the length, think-time and session distributions of synthetic workloads
prefix.py         prompt identities for prefix caching (the feedback workflow)
"""
