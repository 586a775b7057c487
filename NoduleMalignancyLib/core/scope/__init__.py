"""What the model may answer: the input checks and refusals, the answer's tier, the lung field, the vessel and curvature checks."""
