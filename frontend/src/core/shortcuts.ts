/** Every tool and action with its keyboard shortcut: the key handler and the help panel read this one table. */

export type ToolId = 'navigate' | 'brush' | 'eraser' | 'outline' | 'fill' | 'growcut' | 'airefine' | 'scissors'

export interface ToolSpec {
  id: ToolId
  key: string
  label: string
  icon: string
  help: string
}

export const TOOLS: ToolSpec[] = [
  { id: 'navigate', key: 'V', label: 'Navigate', icon: '✥', help: 'Click: move the crosshair. Right-drag: window/level. Wheel: slices.' },
  { id: 'brush', key: 'B', label: 'Brush', icon: '●', help: 'Paint the active structure; size in mm. Ctrl+click navigates.' },
  { id: 'eraser', key: 'E', label: 'Eraser', icon: '◌', help: 'Erase the active structure only; other structures stay intact.' },
  { id: 'outline', key: 'O', label: 'Filled outline', icon: '⬠', help: 'Draw a closed outline; it is filled on release.' },
  { id: 'fill', key: 'F', label: 'Flood fill', icon: '▧', help: 'Fill the enclosed region on this slice. Shift+click clears a painted region.' },
  { id: 'growcut', key: 'G', label: 'Grow-cut', icon: '✺', help: 'Click a seed: grow-cut segments the region around it (uses the display window).' },
  { id: 'airefine', key: 'K', label: 'AI refine', icon: '✦', help: 'Click inside the structure (Shift+click outside): the AI model redraws it; each click refines the last answer.' },
  { id: 'scissors', key: 'C', label: 'Scissors', icon: '✂', help: 'Click an outline (double-click or Enter closes it): erase or fill inside or outside it, through the volume or a slab; preview, then Enter accepts, Esc rejects.' },
]

export interface ActionSpec {
  keys: string
  label: string
}

export const ACTIONS: ActionSpec[] = [
  { keys: 'H', label: 'Toggle the HU-range constraint of brush, outline and fill' },
  { keys: 'I', label: 'Interpolate between painted slices (current view direction)' },
  { keys: '[ / ]', label: 'Brush size smaller / larger' },
  { keys: 'Ctrl+Z', label: 'Undo' },
  { keys: 'Ctrl+Y / Ctrl+Shift+Z', label: 'Redo' },
  { keys: 'Ctrl+S', label: 'Save a new version (with a message)' },
  { keys: '1 2 3 4 5', label: 'Layout: axial, coronal, sagittal, multiplanar, 3D' },
  { keys: 'W / Shift+W', label: 'Next / previous window preset' },
  { keys: 'R', label: 'Toggle radiological / neurological convention' },
  { keys: 'L', label: 'Show / hide the other structures (label overlay)' },
  { keys: 'A', label: 'Show / hide the attention map' },
  { keys: 'N', label: 'Jump to the next attention region' },
  { keys: '↑ ↓ / PgUp PgDn', label: 'Previous / next slice' },
  { keys: 'Alt+↑ / Alt+↓', label: 'Previous / next structure' },
  { keys: '?', label: 'This help' },
  { keys: 'Esc', label: 'Back to editing (leave a version view or comparison)' },
]
