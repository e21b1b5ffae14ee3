"""Sessions: the durable unit of work. Owns the session row (which is also the queue), its
state machine, and its append-only event log. Runs nothing itself: the runtime does."""
