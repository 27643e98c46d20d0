"""Code tasks: the task generator, the sandbox and eval-code."""
