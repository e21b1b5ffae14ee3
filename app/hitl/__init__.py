"""Human-in-the-loop: approval requests, reviewers' decisions, expiry. A pause is a row,
never a suspended coroutine; deciding re-queues the session."""
