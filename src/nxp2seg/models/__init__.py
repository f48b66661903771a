"""Networks (MONAI), the segmentation LightningModule and the model bundle.

Import the submodules directly (``nxp2seg.models.networks``,
``nxp2seg.models.segmenter``, ``nxp2seg.models.bundle``); this package does
not import torch or Lightning by itself.
"""
