"""Standard codes of label structures for DICOM SEG: SNOMED CT from DICOM's own tables, a documented private
scheme for the rest, and the matching of a SEG's segments back to a schema's structures.

Each structure is coded as DICOM's Segment Description macro asks (PS3.3 C.8.20.2, PS3.16 CID 7150/7151):

* **category** (Segmented Property Category): SCT 91723000 "Anatomical Structure" for organs, vessels, ducts and
  bones; SCT 49755003 "Morphologically Abnormal Structure" for lesions (CID 7150);
* **type** (Segmented Property Type): the SNOMED CT concept of the anatomy, taken from pydicom's `codes.SCT` (which
  holds DICOM's code tables) where it has it; the pancreas parts, absent there, carry their SNOMED CT concept ids
  (64163001 head, 40133006 body, 73239005 tail of pancreas). A paired organ is coded once (Kidney, Adrenal gland,
  Lung, Femur) with its side as a **modifier** (Segmented Property Type Modifier: SCT 7771000 Left / 24028007 Right);
* **region** (Anatomic Region Sequence): where a lesion sits; the PanTS pancreatic lesion is SCT 108369006
  "Neoplasm" (PanTS is a pancreatic tumour dataset) in the region SCT 15776009 "Pancreas".

PanTS `veins` (portal and splenic vein drawn as one mask) is coded with the general SCT 29092000 "Vein";
`postcava` is the inferior vena cava.

**Private scheme `99MASKLOOP`.** A structure with no standard code (a custom project's own structure, when its
schema gives no code) is coded in the private scheme `99MASKLOOP` (DICOM PS3.16 8.2: private schemes start with
"99"): category "Anatomical Structure" (or "Morphologically Abnormal Structure" for the `lesion` group), code value
the structure name when it fits DICOM's 16 characters, else its first 7 characters, '-' and the first 8 hex
digits of the name's SHA-1 (`private_value`), and code meaning the structure name. A SEG that uses it names the
scheme in its Coding Scheme Identification Sequence ("maskloop structure codes", responsible organisation
maskloop). Reading a SEG back, such a code matches the structure whose own private code it is.

A project's label schema keeps each structure's code (`code` in the schema JSON, the `structures.code` column):
given by the schema or, when absent, defaulted from `DEFAULT_CODES` by structure name, else private.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from backend.core.errors import InvalidInput

PRIVATE_SCHEME = "99MASKLOOP"
PRIVATE_SCHEME_NAME = "maskloop structure codes"
PRIVATE_SCHEME_ORGANIZATION = "maskloop"
STANDARD_SCHEME = "SCT"
_MAX_VALUE = 16  # DICOM Code Value (SH)
_MAX_MEANING = 64  # DICOM Code Meaning (LO)
_MAX_SCHEME = 16  # DICOM Coding Scheme Designator (SH)
_PARTS = ("category", "type", "modifier", "region")


@dataclass(frozen=True)
class Concept:
    """One coded concept: coding scheme designator, code value and code meaning."""

    scheme: str
    value: str
    meaning: str

    def to_code(self) -> Code:
        """The pydicom Code (whose equality maps legacy SNOMED-RT 'SRT' codes to SNOMED CT)."""
        return Code(self.value, self.scheme, self.meaning)

    def same(self, other: Concept | None) -> bool:
        """Whether two concepts are the same code (SRT and SCT spellings of one concept are the same)."""
        return other is not None and self.to_code() == other.to_code()

    def to_json(self) -> dict[str, str]:
        """The concept as the schema JSON stores it."""
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @classmethod
    def from_json(cls, data: object, where: str) -> Concept:
        """Validate a {"scheme", "value", "meaning"} object of a schema or request."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where} must be an object with scheme, value and meaning")
        fields = {key: str(data.get(key, "") or "").strip() for key in ("scheme", "value", "meaning")}
        limits = {"scheme": _MAX_SCHEME, "value": _MAX_VALUE, "meaning": _MAX_MEANING}
        for key, text in fields.items():
            if not text:
                raise InvalidInput(f"{where} needs a non-empty {key}")
            if len(text) > limits[key] or any(ord(c) < 32 or c == "\\" for c in text):
                raise InvalidInput(f"{where} {key} {text!r} must be at most {limits[key]} printable characters")
        return cls(fields["scheme"], fields["value"], fields["meaning"])

    @classmethod
    def of(cls, code: Code, meaning: str | None = None) -> Concept:
        """A concept from a pydicom Code, optionally with another meaning."""
        return cls(str(code.scheme_designator), str(code.value), meaning or str(code.meaning))


@dataclass(frozen=True)
class StructureCode:
    """How one structure is coded in a SEG: category, type, optional modifier (laterality) and region."""

    category: Concept
    type: Concept
    modifier: Concept | None = None
    region: Concept | None = None

    @property
    def standard(self) -> bool:
        """Whether the type is a SNOMED CT code (not the private scheme)."""
        return self.type.scheme in (STANDARD_SCHEME, "SRT")

    def to_json(self) -> dict[str, dict[str, str]]:
        """The code as the schema JSON stores it (absent parts left out)."""
        parts = {"category": self.category, "type": self.type, "modifier": self.modifier, "region": self.region}
        return {key: concept.to_json() for key, concept in parts.items() if concept is not None}

    @classmethod
    def from_json(cls, data: object, where: str = "code") -> StructureCode:
        """Validate a schema's `code` object: category and type required, modifier and region optional."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where} must be an object with category, type and optional modifier and region")
        extra = sorted(set(data) - set(_PARTS))
        if extra:
            raise InvalidInput(f"{where} has unknown fields {extra}; use {list(_PARTS)}")
        for key in ("category", "type"):
            if key not in data:
                raise InvalidInput(f"{where} needs a {key}")
        return cls(
            category=Concept.from_json(data["category"], f"{where}.category"),
            type=Concept.from_json(data["type"], f"{where}.type"),
            modifier=Concept.from_json(data["modifier"], f"{where}.modifier") if data.get("modifier") else None,
            region=Concept.from_json(data["region"], f"{where}.region") if data.get("region") else None,
        )

    def matches(self, other: StructureCode, *, region: bool = True) -> bool:
        """Same type and modifier (and, with `region`, same anatomic region)."""
        if not self.type.same(other.type):
            return False
        if (self.modifier is None) != (other.modifier is None):
            return False
        if self.modifier is not None and not self.modifier.same(other.modifier):
            return False
        if not region:
            return True
        if self.region is None or other.region is None:
            return self.region is other.region
        return self.region.same(other.region)


ANATOMICAL_STRUCTURE = Concept.of(codes.cid7150.AnatomicalStructure)
MORPHOLOGICALLY_ABNORMAL = Concept.of(codes.cid7150.MorphologicallyAbnormalStructure)
LEFT = Concept.of(codes.SCT.Left)
RIGHT = Concept.of(codes.SCT.Right)
PANCREAS = Concept.of(codes.SCT.Pancreas)


def _organ(code: Code | Concept, side: Concept | None = None, meaning: str | None = None) -> StructureCode:
    """An anatomical structure, optionally with its side."""
    concept = code if isinstance(code, Concept) else Concept.of(code, meaning)
    return StructureCode(ANATOMICAL_STRUCTURE, concept, side)


_SCT = codes.SCT
# SNOMED CT concepts that pydicom's DICOM tables lack (ids of the SNOMED CT International edition).
HEAD_OF_PANCREAS = Concept(STANDARD_SCHEME, "64163001", "Head of pancreas")
BODY_OF_PANCREAS = Concept(STANDARD_SCHEME, "40133006", "Body of pancreas")
TAIL_OF_PANCREAS = Concept(STANDARD_SCHEME, "73239005", "Tail of pancreas")

# Every PanTS structure (and a few common names custom schemas use), by structure name.
DEFAULT_CODES: dict[str, StructureCode] = {
    "adrenal_gland_left": _organ(_SCT.AdrenalGland, LEFT),
    "adrenal_gland_right": _organ(_SCT.AdrenalGland, RIGHT),
    "aorta": _organ(_SCT.Aorta),
    "bladder": _organ(_SCT.Bladder, meaning="Urinary bladder"),
    "celiac_artery": _organ(_SCT.StructureOfCeliacArtery, meaning="Celiac artery"),
    "colon": _organ(_SCT.Colon),
    "common_bile_duct": _organ(_SCT.CommonBileDuct),
    "duodenum": _organ(_SCT.Duodenum),
    "femur_left": _organ(_SCT.Femur, LEFT),
    "femur_right": _organ(_SCT.Femur, RIGHT),
    "gall_bladder": _organ(_SCT.Gallbladder),
    "kidney_left": _organ(_SCT.Kidney, LEFT),
    "kidney_right": _organ(_SCT.Kidney, RIGHT),
    "liver": _organ(_SCT.Liver),
    "lung_left": _organ(_SCT.Lung, LEFT),
    "lung_right": _organ(_SCT.Lung, RIGHT),
    "pancreas": _organ(_SCT.Pancreas),
    "pancreas_body": _organ(BODY_OF_PANCREAS),
    "pancreas_head": _organ(HEAD_OF_PANCREAS),
    "pancreas_tail": _organ(TAIL_OF_PANCREAS),
    "pancreatic_duct": _organ(_SCT.PancreaticDuct),
    "postcava": _organ(_SCT.InferiorVenaCava),
    "prostate": _organ(_SCT.Prostate),
    "spleen": _organ(_SCT.Spleen),
    "stomach": _organ(_SCT.Stomach),
    "superior_mesenteric_artery": _organ(_SCT.SuperiorMesentericArtery),
    "veins": _organ(_SCT.Vein),
    "pancreatic_lesion": StructureCode(MORPHOLOGICALLY_ABNORMAL, Concept.of(_SCT.Neoplasm), region=PANCREAS),
    # Common names of other abdominal schemas (TotalSegmentator-like), defaulted the same way.
    "esophagus": _organ(_SCT.Esophagus),
    "gallbladder": _organ(_SCT.Gallbladder),
    "inferior_vena_cava": _organ(_SCT.InferiorVenaCava),
    "urinary_bladder": _organ(_SCT.Bladder, meaning="Urinary bladder"),
    "portal_vein": _organ(_SCT.PortalVein),
    "splenic_vein": _organ(_SCT.SplenicVein),
    "superior_mesenteric_vein": _organ(_SCT.SuperiorMesentericVein, meaning="Superior mesenteric vein"),
    "heart": _organ(_SCT.Heart),
    "small_bowel": _organ(_SCT.SmallIntestine),
    "rectum": _organ(_SCT.Rectum),
}


def private_value(name: str) -> str:
    """The private scheme's code value of a structure name (the name itself when it fits 16 characters)."""
    if len(name) <= _MAX_VALUE:
        return name
    return f"{name[:7]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def private_code(name: str, *, lesion: bool = False) -> StructureCode:
    """The documented private code of a structure that has no standard one."""
    category = MORPHOLOGICALLY_ABNORMAL if lesion else ANATOMICAL_STRUCTURE
    return StructureCode(category, Concept(PRIVATE_SCHEME, private_value(name), name[:_MAX_MEANING]))


def default_code(name: str, *, lesion: bool = False) -> StructureCode:
    """The table's code of a structure name, else its private code."""
    return DEFAULT_CODES.get(name) or private_code(name, lesion=lesion)


def default_code_json(name: str) -> dict[str, dict[str, str]] | None:
    """The table's code of a structure name as schema JSON; None when the table has none (private at use)."""
    code = DEFAULT_CODES.get(name)
    return code.to_json() if code is not None else None


def structure_code(name: str, stored: Mapping[str, Any] | None, *, lesion: bool = False) -> StructureCode:
    """A structure's code: the one its schema stores, else the table's by name, else the private one."""
    if stored:
        return StructureCode.from_json(stored, f"code of structure {name!r}")
    return default_code(name, lesion=lesion)


def normalise_name(text: str) -> str:
    """A label as a structure name: lower case, runs of other characters as '_' ('Kidney, Left' -> kidney_left)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class SegmentCoding:
    """What a SEG says about one segment: its number, label and code."""

    number: int
    label: str
    code: StructureCode | None


@dataclass(frozen=True)
class NamedCode:
    """A schema structure as matching sees it: name, aliases and code."""

    name: str
    aliases: Sequence[str]
    code: StructureCode


def match_segment(segment: SegmentCoding, structures: Sequence[NamedCode]) -> str | None:
    """The structure a segment is, by code (type, modifier and region), then by name; None when unknown.

    A code matches when type and modifier agree and the regions agree (a segment or structure without a region
    matches on type and modifier alone when that is unambiguous). By name: the segment label, or its code meaning
    with the modifier ('Kidney' + 'Left' -> kidney_left), equals a structure name or alias once normalised.
    """
    code = segment.code
    if code is not None:
        exact = [s.name for s in structures if s.code.matches(code)]
        if len(exact) == 1:
            return exact[0]
        loose = [s for s in structures if s.code.matches(code, region=False)]
        if len(loose) == 1 and (code.region is None or loose[0].code.region is None):
            return loose[0].name
    candidates = [segment.label]
    if code is not None:
        side = f" {code.modifier.meaning}" if code.modifier is not None else ""
        candidates.append(code.type.meaning + side)
    for text in candidates:
        wanted = normalise_name(text)
        for structure in structures:
            names = [structure.name, *structure.aliases]
            if wanted and wanted in {normalise_name(n) for n in names}:
                return structure.name
    return None


def coded_fraction(codes_: Iterable[StructureCode]) -> float:
    """The fraction of codes that are standard (SNOMED CT) ones; NaN for none."""
    items = list(codes_)
    return sum(c.standard for c in items) / len(items) if items else float("nan")
