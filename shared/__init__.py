"""Contracts shared by the api, worker and dispatcher processes."""
