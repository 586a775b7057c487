"""The network and what its folds make: the ensemble, fusion, gate health, patient folds, similar nodules, metrics."""
