"""`llmcycle serve`: an OpenAI-compatible server with adapters chosen per request, continuous batching and a playground.

Laid out by concern, as vLLM's entrypoints are; a module imports only those listed below it:

    server.py    the process: RunningServer (the app, its state and uvicorn on a thread)
    listening.py a bound socket and uvicorn stopping on SIGINT/SIGTERM (shared with llmcycle label)
    vllm.py      --engine vllm: the hand-off to vLLM's own server
    app.py       the FastAPI app and its routes
    handling.py  one request: body, API key, model lookup, token checks, jobs queued with the engine
    render.py    events as OpenAI's JSON answer or server-sent events
    state.py     what the routes share: config, metrics, the engine once loaded
    bridge.py    events from the engine thread to the event loop
    engine.py    continuous batching, with the public API the HTTP side uses (submit, cancel, adapters, stats)
    runner.py    the model's forward passes and the batch's KV cache
    sampler.py   each row's next token (logits processors, seeded generators)
    jobs.py      what the engine takes (Job) and sends back (TextDelta, Finished, Failed)
    models.py    the served base model and adapters
    config.py    ServerConfig, whose fields are the verb's flags
    batch.py, text.py, metrics.py, protocol.py: leaves (cache rows, stop sequences, /metrics, request bodies)
"""
