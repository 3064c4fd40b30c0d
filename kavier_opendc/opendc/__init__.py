"""The OpenDC side: the datacenter, the export of a simulation as OpenDC inputs, the bridge, the results.

datacenter.py  the datacenter description (hosts, power models, power source, battery)
topology.py    OpenDC hosts under the 4-GPU limit, replica placement, topology/experiment JSON
simulation_view.py  a simulation's outputs as the export sees them: checked, per-replica GPU, tp and model
fragments.py   the export's algorithms: timeline segments -> fragments, GPU time shared among requests
export.py      the writer: a simulation's timeline as OpenDC tasks and fragments (Parquet)
inputs.py      every OpenDC input for one simulation, written together
span.py        the simulated span OpenDC would step through, refused before the JVM when too long
carbon.py      carbon-intensity traces
jvm.py         the JVM side: a Java >= 21, the bridge jar, its Maven build
bridge.py      the Py4J session with the real OpenDC on the JVM (starts the jar, runs, stops it)
results.py     OpenDC's output as energy, power and carbon
attribution.py per-request energy and carbon consistent with OpenDC's run
overheads.py   PUE (facility energy) and the devices' embodied carbon
"""
