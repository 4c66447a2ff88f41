"""Editor operations computed on the server (interpolation, margin, islands, smoothing, fill holes, logical
operations, scissors, statistics): the browser sends its current masks as boxes and gets a preview box back,
which it applies as an ordinary undoable edit and later saves as a patch. Nothing here writes a version."""
