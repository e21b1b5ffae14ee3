"""Tool credentials per agent and tool: encrypted at rest, injected only into the executor."""
