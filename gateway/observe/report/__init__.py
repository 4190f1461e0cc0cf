"""`gateway report`: the logs and outcomes read with DuckDB, compared, and rendered."""
