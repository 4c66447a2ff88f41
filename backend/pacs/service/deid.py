"""De-identification of DICOM headers (PS3.15 Basic Application Level Confidentiality Profile): the rules live in
`backend.imaging.dicom_deid`, shared with the DICOM SEG export; PACS intake and STOW use them through this module."""

from backend.imaging.dicom_deid import METHOD, METHOD_CODES, Pseudonyms, deidentify

__all__ = ["METHOD", "METHOD_CODES", "Pseudonyms", "deidentify"]
