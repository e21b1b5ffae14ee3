"""Human-in-the-loop: approval requests, reviewers' decisions (quorum, no self-approval),
expiry by policy, reviewer notifications. A pause is a row, never a suspended coroutine;
settling a session's last request re-queues it. It never runs tools nor writes a session's
status except through app.sessions.transitions."""
