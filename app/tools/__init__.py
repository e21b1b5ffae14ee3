"""Tools: the registry (built-in Python tools and HTTP tools registered through the API),
input validation, execution under timeout/retry/size caps, and the durable tool-call
ledger. Does not decide whether a call is allowed: the policy engine does."""
