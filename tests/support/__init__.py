"""Helpers for tests that run the real processes against the real RabbitMQ and PostgreSQL."""
