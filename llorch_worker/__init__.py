"""llorch worker: one GGUF model for life, one job at a time, tokens straight to the client.

Nothing here may import `nats` at package import time: `__main__` imports `llama_cpp` first.
"""
