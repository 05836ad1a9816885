"""AMQP plumbing shared by every process: connection, publisher, headers."""
