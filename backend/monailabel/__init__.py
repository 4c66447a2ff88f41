"""MONAI Label-compatible endpoints (3D Slicer, OHIF) per project: /monailabel/{project}/."""
