"""The tracer: measure a real OpenAI-compatible LLM deployment (``kavier trace``).

client.py   asynchronous streaming client (aiohttp): one request, its token timestamps, errors
prompts.py  prompts of an exact token count (the server's ``/tokenize``, else a calibrated estimate)
runner.py   the two modes: ``sweep`` (single requests over a length grid) and ``replay`` (a trace)
outputs.py  requests.parquet, summary.json and the sweep's measurement table, written atomically
"""
