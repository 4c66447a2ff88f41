"""Blob housekeeping: stale temp files, mark-and-sweep garbage collection and fsck of the blob store."""
