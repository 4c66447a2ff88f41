"""Exports: PanTS, nnU-Net v2, MSD and DICOM SEG datasets of chosen label versions, built by a cpu job."""
