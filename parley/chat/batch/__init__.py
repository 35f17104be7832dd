"""Batch jobs: bulk work at the batch price (`service.BatchService`, `jobs`)."""
