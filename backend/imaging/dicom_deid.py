"""De-identification of DICOM headers: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile, with
the Retain Patient Characteristics option (sex, age, size, weight) and the Retain Institution Identity option
(InstitutionName only: the scan's site). Pure pydicom, no database: PACS intake (`backend.pacs.service.deid`
re-exports it) and the DICOM SEG export (`backend.exports.service.writing`) both use it.

Rules, applied to the dataset and every nested sequence item:

* PatientID and PatientName become the research patient id; every UID that is not a registered DICOM UID (SOP
  class, transfer syntax, coding scheme...) becomes a research UID. Both are HMAC-SHA256 of the original keyed by
  the project's salt, so one original always gets the same replacement (a study keeps its series together, a
  re-import finds its scan) and nobody without the salt can map back; the map is kept server-side for leads.
* Every person name (PN) other than the patient's is removed (ReferringPhysicianName is kept empty: type 2).
* Every date, time and date-time is emptied (the profile's Z/X/D for dates, without longitudinal information).
* The profile's other identifying attributes (table E.1-1: other patient ids and names, addresses, telephone
  numbers, accession number, study id, descriptions and comments, request and procedure step attributes, station,
  device serial number, institution address and department...) are removed or emptied.
* Private tags, curves (50xx) and overlays (60xx) are removed.
* PatientIdentityRemoved = YES with DeidentificationMethod and its code sequence (113100, 113108, 113112).

A stricter tool may remove more (the profile allows it); a series whose pixels carry burned-in annotation
(BurnedInAnnotation YES) is refused, since the Clean Pixel Data option is not applied.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from backend.core.errors import InvalidInput

METHOD = (
    "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile",
    "Retain Patient Characteristics Option",
    "Retain Institution Identity Option (name only)",
    "maskloop",
)
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113112", "Retain Institution Identity Option"),
)

# Table E.1-1 attributes (besides the generic PN, date/time, UID, private, curve and overlay rules) that go.
_REMOVE = frozenset(
    {
        "AcquisitionComments", "AdditionalPatientHistory", "AdmissionID", "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription", "Allergies", "AuthorObserverSequence", "BranchOfService", "CassetteID",
        "ClinicalTrialSponsorName", "ContentCreatorIdentificationCodeSequence", "CountryOfResidence",
        "CurrentPatientLocation", "DataSetTrailingPadding", "DerivationDescription", "DetectorID",
        "DeviceSerialNumber", "DigitalSignaturesSequence", "DistributionAddress", "DistributionName",
        "EthnicGroup", "FillerOrderNumberImagingServiceRequest", "FrameComments", "GantryID", "IconImageSequence",
        "ImageComments", "InstitutionAddress", "InstitutionCodeSequence", "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence", "IssuerOfAdmissionID", "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence", "MACParametersSequence", "MedicalAlerts", "MedicalRecordLocator",
        "MilitaryRank", "ModifiedAttributesSequence", "Occupation", "OperatorIdentificationSequence",
        "OrderCallbackPhoneNumber", "OrderEntererLocation", "OriginalAttributesSequence", "OtherPatientIDs",
        "OtherPatientIDsSequence", "OtherPatientNames", "ParticipantSequence", "PatientAddress",
        "PatientComments", "PatientInstitutionResidence", "PatientInsurancePlanCodeSequence",
        "PatientReligiousPreference", "PatientState", "PatientTelecomInformation", "PatientTelephoneNumbers",
        "PerformedLocation", "PerformedProcedureStepDescription", "PerformedProcedureStepID",
        "PerformedStationAETitle", "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
        "PerformedStationNameCodeSequence", "PerformingPhysicianIdentificationSequence", "PersonAddress",
        "PersonIdentificationCodeSequence", "PersonTelecomInformation", "PersonTelephoneNumbers",
        "PhysiciansOfRecordIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
        "PlacerOrderNumberImagingServiceRequest", "PlateID", "ProtocolName", "ReasonForStudy",
        "ReasonForTheRequestedProcedure", "ReferencedPatientAliasSequence", "ReferencedPatientPhotoSequence",
        "ReferencedPatientSequence", "ReferencedStudySequence", "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
        "RequestAttributesSequence", "RequestedProcedureDescription", "RequestedProcedureID", "RequestingService",
        "ResponsibleOrganization", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
        "ServiceEpisodeDescription", "ServiceEpisodeID", "SeriesDescription", "StationName", "StudyComments",
        "StudyDescription", "TextComments", "TimezoneOffsetFromUTC", "TopicAuthor", "TopicKeywords", "TopicSubject",
        "TopicTitle", "VisitComments",
    }
)  # fmt: skip
# Type 2 attributes (and the referring physician) that stay, empty.
_EMPTY = frozenset({"AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate"})
# Descriptors the profile replaces with a dummy value (D) rather than removes.
_DUMMY = {"ContrastBolusAgent": "CONTRAST"}
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_FILE_META_UIDS = ("MediaStorageSOPInstanceUID",)


def _digest(salt: str, kind: str, value: str) -> bytes:
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Pseudonyms:
    """Research identifiers keyed by a project's salt: the same original always gets the same replacement."""

    salt: str

    def uid(self, original: str) -> str:
        """A research UID (2.25.<128-bit integer>) for an original UID."""
        return "2.25." + str(int.from_bytes(_digest(self.salt, "uid", original.strip())[:16], "big"))

    def patient(self, original: str) -> str:
        """A research patient id ('R' + 12 hex digits) for an original patient id."""
        return "R" + _digest(self.salt, "patient", original.strip()).hex()[:12].upper()


def _registered(value: str) -> bool:
    return value in UID_dictionary


def _new_uid(names: Pseudonyms, value: object) -> object:
    if isinstance(value, str):
        return value if not value or _registered(value) else names.uid(value)
    if isinstance(value, Iterable):
        return [_new_uid(names, v) for v in value]
    return value


def _clean(ds: Dataset, names: Pseudonyms) -> None:
    """Apply the rules to one dataset level and recurse into its sequences."""
    for element in list(ds):
        if element.tag.is_private:
            del ds[element.tag]
            continue
        if element.tag.group in range(0x5000, 0x5100) or element.tag.group in range(0x6000, 0x6100):
            del ds[element.tag]
            continue
        _clean_element(ds, element, names)


def _clean_element(ds: Dataset, element: DataElement, names: Pseudonyms) -> None:
    keyword = element.keyword
    if keyword in ("PatientID", "PatientName"):
        element.value = names.patient(str(ds.get("PatientID", "") or ""))
    elif keyword in _EMPTY:
        element.value = ""
    elif keyword in _REMOVE or (element.VR == "PN" and keyword not in _EMPTY):
        del ds[element.tag]
    elif keyword in _DUMMY:
        element.value = _DUMMY[keyword] if element.value else ""
    elif element.VR in _DATE_VRS:
        element.value = ""
    elif element.VR == "UI":
        element.value = _new_uid(names, element.value)
    elif element.VR == "SQ" and isinstance(element.value, Sequence):
        for item in element.value:
            _clean(item, names)


def deidentify(ds: Dataset, names: Pseudonyms) -> Dataset:
    """De-identify a dataset in place (see the module's rules) and return it."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise InvalidInput(
            "the series has burned-in annotation in its pixels (BurnedInAnnotation YES); it cannot be de-identified "
            "by its header alone",
            tag="BurnedInAnnotation",
        )
    patient_id = str(ds.get("PatientID", "") or "")
    _clean(ds, names)
    research = names.patient(patient_id)
    ds.PatientID = research
    ds.PatientName = research
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in _FILE_META_UIDS:
            if keyword in meta and "SOPInstanceUID" in ds:
                setattr(meta, keyword, ds.SOPInstanceUID)
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.DeidentificationMethod = list(METHOD)
    codes = []
    for value, meaning in METHOD_CODES:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    return ds
