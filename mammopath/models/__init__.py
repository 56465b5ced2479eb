"""Model: shared ViT encoder with modality adapters, task heads and the LightningModule."""
