"""Every asset of CL, in the order of the loop; `definitions.py` and the CLI's runner use this list."""

from cl_assets.defs.assets.curation import curated_snapshot, knowledge_facts
from cl_assets.defs.assets.deployment import deployed_adapter
from cl_assets.defs.assets.evaluation import adapter_eval
from cl_assets.defs.assets.ingestion import raw_interactions
from cl_assets.defs.assets.monitoring import quality_metrics
from cl_assets.defs.assets.training import base_anchor, lora_adapter

ASSETS = [raw_interactions, knowledge_facts, curated_snapshot, base_anchor, lora_adapter, adapter_eval, deployed_adapter, quality_metrics]
