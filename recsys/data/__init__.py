"""Data contract: schema, readers, validation, vocabularies, sequences and batches."""
