"""The catalogue: its schema, the readers (JSONL/CSV/Parquet, the H&M layout) and the
synthetic catalogue generator."""
