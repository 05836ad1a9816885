"""Task state storage: table definitions, engine, migrations, the local server."""
