"""Which frames the model sees: the sampling grid, cut and near-duplicate detection, the samplers."""
