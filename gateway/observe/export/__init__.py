"""`gateway logs export`: the inference logs as date-partitioned Parquet, streamed."""
