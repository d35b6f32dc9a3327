"""The HTTP edge: OpenAI-compatible endpoints and a live dashboard over llorch's NATS API.

A plain client of the bus, like any other: it imports only `schemas` and `llorch_common`,
holds no state between requests and decides nothing (docs/http.md).
"""
