"""The runtime every llorch process shares, outside the wire contract.

The three components (`llorch_orch`, `llorch_pool`, `llorch_worker`) never import each
other, so the conventions each of them follows on the bus live here, once: `connect`
(credentials → connection options, inbox prefix, drain timeout), `lifeline` (how a
long-running process connects, and exits when NATS closes its connection for good),
`tracing` (W3C context in NATS headers, span names, tracing set-up), `observe` (metrics and
log set-up), `footprint` (how memory is measured: NVML v2, per-process, RSS), `aio`
(cancellation-safe waits), `local` (a host's data dir and default pool id) and `orphan` (a
child process that dies with its parent, without code between fork and exec).

It imports `schemas` (the wire contract) and nothing of the components.
"""
