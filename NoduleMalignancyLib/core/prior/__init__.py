"""A prior CT: the nodule found on it, the registration, the comparison and the growth (volume doubling time)."""
