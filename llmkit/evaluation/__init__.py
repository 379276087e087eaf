"""The evaluation engine: sandboxed code execution, metrics, tasks and the harness."""
