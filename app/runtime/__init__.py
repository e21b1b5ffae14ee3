"""The durable runtime: the worker pool that claims sessions from the sessions table
(SKIP LOCKED, leases, heartbeats, fencing, a reaper), and the agent loop that runs one
durable step at a time. Knows nothing of HTTP."""
