"""Front doors: other client APIs served through the chat-completions pipeline.

Each front door is a pure translation: a request in the client's API (OpenAI Responses, Anthropic
Messages) becomes a chat-completions body that the pipeline routes, caches, costs and records like any
other, and the pipeline's answer (a chat completion or its SSE chunks) is rendered back in the client's
API. :mod:`gateway.frontdoors.http` runs them on the wire; nothing else here knows about HTTP.
"""
