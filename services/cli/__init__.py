"""`taskmgr`: one command for running the fleet and for operators."""
