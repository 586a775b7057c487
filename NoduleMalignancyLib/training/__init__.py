"""Training of the K-fold MIL ensemble: canvas cache, augmentation, losses, loop, export.

Kept out of the inference path: nothing here is imported by analysis or the Slicer module.
"""
