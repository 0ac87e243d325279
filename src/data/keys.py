"""Batch dictionary keys, defined once. Every dataset, collate function and LightningModule uses these."""

IMAGE = "image"  # float tensor [B, C, H, W], normalised
LABEL = "label"  # int64 [B]: class id (classification) or identity id (metric learning)
INDEX = "index"  # int64 [B]: position of the sample in its dataset (de-duplication under DDP)
SOFT_LABEL = "soft_label"  # float [B, C]: distillation / mixed targets when present
TARGET = "target"  # detection: list of dicts {boxes [N, 4] xyxy, labels [N], ...}, one per image (sizes differ)
