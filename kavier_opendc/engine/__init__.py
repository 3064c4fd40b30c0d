"""Input D, the serving simulation: an event loop over a router and vLLM-style replicas.

simulator.py     SimConfig, and a simulation's set-up (replicas, router) and result
event_loop.py    the discrete-event loop of co-located serving (arrivals -> router -> replicas)
deferral.py      carbon-aware deferral: when a request with a deadline is released to the router
knobs.py         every serving knob declared once: its CLI flag, experiment path, bounds, help
disaggregated.py disaggregated prefill/decode: the prefill and decode replicas and their event loop
kv_link.py       the P/D topology (pools, link) and the FIFO KV-transfer link model
closed_loop.py   closed-loop clients: the arrival of each request when a client is freed
router.py        which replica an arriving request goes to
replica.py       one replica's state; applies the iterations its scheduler forms
scheduler.py     batch formation: running requests, admission, preemption, decode runs (vLLM v1)
scheduler_v0.py  batch formation by vLLM v0's rules
scheduler_multistep.py  vLLM v0 with multi-step scheduling (--num-scheduler-steps, vLLM 0.6)
scheduler_sglang.py     batch formation by SGLang v0.3's rules (extend or decode batches)
scheduler_trtllm.py     batch formation by TensorRT-LLM's in-flight batching (capacity and micro-batch rules)
sched_output.py  what a scheduler forms: an Iteration or a DecodeRunPlan
request_queue.py the waiting queue (first come, first served)
decode_state.py  the decoders, held lazily against one counter
kv_manager.py    the owner of a replica's KV blocks: allocation, release, the prefix cache over them
kv_cache.py      the prefix cache's data structure (LRU, host tier) and the prompt cache
cost_model.py    how long one batched forward pass takes
clock.py         GPU power caps and locked SM clocks: the clock each iteration runs at, and its power
speculative.py   speculative decoding: tokens verified and emitted per step, the drafting cost
request.py       the request records
results.py       the per-request results arrays
timeline.py      a replica's activity over time
energy.py        per-request energy attribution: the rules, and the static share by residence
itl.py           inter-token gaps: per-request and pooled statistics from the decode state's logs
outputs.py       the Parquet/JSON outputs (requests.parquet, summary.json, timeline.parquet)
replica_policies.py  the replicas of the other policies (vLLM v0, SGLang, TensorRT-LLM), kept interpreted
compiled.py      which of the modules setup.py compiles with mypyc run compiled, or from their sources
"""

from kavier_opendc.engine import compiled as _compiled

_compiled.install()  # the compiled modules, or their sources (compiled.py), before any is imported
