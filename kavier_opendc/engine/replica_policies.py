"""The replicas of the other scheduler policies: vLLM v1's replica (replica.py) with another policy's batch
formation in front of it in the method order.

Kept apart from replica.py, which may be compiled (mypyc, see setup.py): a compiled class takes one base,
and these join two, so they stay interpreted classes deriving from the compiled ones.
"""

from __future__ import annotations

from kavier_opendc.engine.replica import Replica
from kavier_opendc.engine.scheduler_multistep import SchedulerMultiStep
from kavier_opendc.engine.scheduler_sglang import SchedulerSGLang
from kavier_opendc.engine.scheduler_trtllm import SchedulerTRTLLM
from kavier_opendc.engine.scheduler_v0 import SchedulerV0


class ReplicaV0(SchedulerV0, Replica):
    """A replica scheduled by vLLM v0's rules (scheduler_v0.py)."""


class ReplicaV0MultiStep(SchedulerMultiStep, Replica):
    """A replica scheduled by vLLM v0's rules with multi-step decode blocks (scheduler_multistep.py)."""


class ReplicaSGLang(SchedulerSGLang, Replica):
    """A replica scheduled by SGLang v0.3's rules (scheduler_sglang.py)."""


class ReplicaTRTLLM(SchedulerTRTLLM, Replica):
    """A replica scheduled by TensorRT-LLM's in-flight batching rules (scheduler_trtllm.py)."""


#: the replica of each scheduler policy (FrameworkProfile.policy)
REPLICA_CLASSES = {"vllm-v1": Replica, "vllm-v0": ReplicaV0, "sglang": ReplicaSGLang, "trtllm": ReplicaTRTLLM}


def replica_class(fw) -> type[Replica]:
    """The replica class of framework ``fw``: its policy's, multi-step for vllm-v0 with scheduler_steps > 1."""
    if fw.policy == "vllm-v0" and fw.scheduler_steps > 1:
        return ReplicaV0MultiStep
    return REPLICA_CLASSES[fw.policy]
