"""GPU campaign and ahead-of-time compilation tools (run on or for a GPU machine)."""
