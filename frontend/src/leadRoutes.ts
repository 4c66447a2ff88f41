/** Routes of the lead pages: #/dashboard, #/audit, #/evaluations, #/evaluations/{id}, #/exports, #/models, #/loop, #/pacs, #/imports (query in the hash). */

import { AuditLog } from './audit'
import { Dashboard } from './dashboard'
import { EvaluationList } from './evaluation/list'
import { EvaluationReport } from './evaluation/report'
import { ExportsPage } from './exports'
import { ImportsPage } from './imports'
import { hashParts } from './lead'
import { LoopPage } from './loop'
import { ModelsPage } from './models'
import { PacsPage } from './pacs'

export { mountWorklistNav } from './lead'

export interface LeadPageView {
  open(): Promise<void>
}

/** The lead page a hash names, or null when it names another part of the app. */
export function leadPage(root: HTMLElement, hash: string): LeadPageView | null {
  const [path] = hashParts(hash)
  if (path === '/audit') return new AuditLog(root)
  if (path === '/dashboard') return new Dashboard(root)
  if (path === '/evaluations') return new EvaluationList(root)
  if (path === '/exports') return new ExportsPage(root)
  if (path === '/models') return new ModelsPage(root)
  if (path === '/loop') return new LoopPage(root)
  if (path === '/pacs') return new PacsPage(root)
  if (path === '/imports') return new ImportsPage(root)
  const run = /^\/evaluations\/(\d+)$/.exec(path)
  if (run) return new EvaluationReport(root, Number(run[1]))
  return null
}
