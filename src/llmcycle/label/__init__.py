"""Human feedback: a page where people rank K completions per prompt (`llmcycle label`), and what the rankings
say (`llmcycle label stats`).

    completions.py  the items: K distinct completions per prompt, sampled (seeded) or read from a file
    queue.py        labelers and tokens, each labeler's queue (with overlap), a submission checked into a row
    store.py        the rankings file: every row appended and fsynced before it is acknowledged, resumed, deduplicated
    app.py          the page and its API on FastAPI/uvicorn; page.html is the page (no external resources)
    session.py      `llmcycle label`: checks, items, store, server
    agreement.py    Kendall's tau-b, pairwise agreement, Krippendorff's alpha (ordinal)
    stats.py        `llmcycle label stats`

The rows are `prompt`, `responses`, `ranking` (1 = best, ties share a rank), which `llmcycle reward` and
`llmcycle align --method dpo` read as they are, with `labeler`, `item`, `flags`, `sources`, `order`, `seconds`
and `time` beside them.
"""
