"""What the model's own loss is called and counted in, by kind of model: kept apart from
`backend.engine.loss` (which needs torch, 1-2 s to import) so the pages that only read a
database can name it."""

METRIC = {"causal": "ce_loss", "encoder": "contrastive_loss"}
UNIT = {"ce_loss": "CE loss, nats / token", "contrastive_loss": "contrastive loss (MNRL), nats / pair"}
"""what a loss increase is counted in, by METRIC"""
