/**
 * Names for the API's shapes, all taken from the generated `schema.d.ts` (`make openapi` regenerates it from the
 * backend's OpenAPI document; `make frontend-check` fails when it is stale). Client-only shapes live in ../types.ts.
 */

import type { components } from './schema'

type Schemas = components['schemas']

export type User = Schemas['UserOut']
export type TokenOut = Schemas['backend__auth__schemas__TokenOut']
export type Project = Schemas['ProjectOut']
export type Structure = Schemas['StructureOut']
export type SchemaOut = Schemas['SchemaOut']
export type Scan = Schemas['ScanOut']
export type ScanPage = Schemas['ScanPage']
export type Facets = Schemas['ScanFacets']
export type ScanPriority = Schemas['ScanPriorityOut']
export type Priority = Schemas['PriorityOut']
export type PriorityPage = Schemas['PriorityPage']
export type VersionStructure = Schemas['VersionStructureOut']
export type Version = Schemas['VersionOut']
export type StructureDiff = Schemas['StructureDiffOut']
export type DiffOut = Schemas['DiffOut']
export type DraftOut = Schemas['DraftOut']
export type Member = Schemas['MemberOut']
export type AuditEvent = Schemas['AuditEventOut']
export type AuditPage = Schemas['AuditPage']
export type UserRef = Schemas['UserRef']
export type TaskLease = Schemas['LeaseOut']
export type TaskOut = Schemas['TaskOut']
export type TaskPage = Schemas['TaskPage']
export type CommentIn = Schemas['CommentIn']
export type CommentOut = Schemas['CommentOut']
export type ReviewOut = Schemas['ReviewOut']
export type FindingOut = Schemas['FindingOut']
export type FindingPage = Schemas['FindingPage']
export type ReaderSetMember = Schemas['ReaderOut']
export type ReaderSetOut = Schemas['ReaderSetOut']
export type EvaluationOut = Schemas['EvaluationOut']
export type EvaluationPage = Schemas['EvaluationPage']
export type ExportJobOut = Schemas['ExportJobOut']
