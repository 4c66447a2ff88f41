"""Interactive AI: click-guided refinement of one structure, answered by a warm worker of the `interactive` queue."""
