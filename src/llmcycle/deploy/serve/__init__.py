"""`llmcycle serve`: an OpenAI-compatible server with adapters chosen per request, continuous batching and a playground."""
