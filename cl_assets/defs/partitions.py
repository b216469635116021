"""One dynamic partition per snapshot id (`YYYYMMDD_HHMMSS`), shared by the whole cycle."""

from dagster import DynamicPartitionsDefinition

snapshot_partitions = DynamicPartitionsDefinition(name="snapshots")
