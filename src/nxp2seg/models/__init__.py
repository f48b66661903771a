"""Networks (MONAI), the grading head, the LightningModules and the model bundle.

Import the submodules directly: ``nxp2seg.models.networks`` (segmentation
networks), ``nxp2seg.models.grading`` (region pooling and the grading head),
``nxp2seg.models.losses`` and ``nxp2seg.models.metrics`` (grading losses and
validation agreement), ``nxp2seg.models.segmenter`` (the segmentation
LightningModule), ``nxp2seg.models.myositis`` (segmentation + grading, and its
inference twin), ``nxp2seg.models.bundle``; this package does not import torch
or Lightning by itself.
"""
