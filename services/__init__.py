"""The three processes (api, worker, dispatcher) and the `taskmgr` CLI."""
