"""Input C, the prompt trace: trace readers, synthetic workloads, prompt identities for prefix caching."""
