/** The review workflow of an open scan: its controller and its two views, built for a host workspace. */

import { ReviewBanner } from './banner'
import { ReviewController } from './controller'
import type { ReviewHost } from './host'
import { ReviewPanel } from './panel'
import { TaskBar } from './taskbar'

export type { ReviewHost } from './host'
export type { ReviewController } from './controller'

export interface Review {
  controller: ReviewController
  /** The task bar (goes over the workspace). */
  bar: HTMLElement
  /** The body of the review tab. */
  panel: HTMLElement
  /** The reviewer's decision (or "waiting for review") for the annotator, under the task bar. */
  banner: HTMLElement
}

export function createReview(host: ReviewHost): Review {
  const controller = new ReviewController(host)
  return { controller, bar: new TaskBar(controller).el, panel: new ReviewPanel(controller).el, banner: new ReviewBanner(controller).el }
}
