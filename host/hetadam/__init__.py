"""hetadam: the Adam optimizer on heterogeneous hardware."""
