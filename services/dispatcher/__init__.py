"""The dispatcher process: owns task state in PostgreSQL and callback delivery."""
