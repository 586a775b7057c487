"""One nodule, one click: the VOI, recentring, the analysis, measurements, evidence maps, explanation, LIDC attributes."""
