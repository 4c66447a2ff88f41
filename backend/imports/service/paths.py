"""Where a dataset import may read: the API accepts only folders under the configured import root."""

from __future__ import annotations

from pathlib import Path

from backend.core.errors import InvalidInput, PermissionDenied


def resolve_under_root(path: str, import_root: Path | None) -> Path:
    """The dataset folder `path` names, resolved (symlinks followed), refused unless it lies under `import_root`.

    A relative path is taken from the import root. Without an import root the API imports nothing (403): the
    server's folders are not the caller's to browse. The folder must exist (422 otherwise).
    """
    if import_root is None:
        raise PermissionDenied(
            "dataset imports through the API are disabled on this server: set MASKLOOP_IMPORT_ROOT to the folder "
            "that holds the datasets (or import with `maskloop import` on the server)",
            reason="no_import_root",
        )
    text = path.strip()
    if not text or "\x00" in text:
        raise InvalidInput("give the dataset folder as a path on the server, under the import root")
    root = import_root.resolve()
    candidate = Path(text)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise InvalidInput(f"{text!r} cannot be resolved to a folder ({exc})") from exc
    if not resolved.is_relative_to(root):
        raise PermissionDenied(
            f"{text!r} is outside the import root: the API only imports folders under {str(root)!r}",
            reason="outside_import_root",
            import_root=str(root),
        )
    if not resolved.is_dir():
        shown = resolved.relative_to(root)
        raise InvalidInput(f"dataset folder {str(shown)!r} does not exist under the import root", path=text)
    return resolved


def resolve_local(path: Path) -> Path:
    """A dataset folder named on the server's command line (any folder the operator can read), resolved."""
    resolved = Path(path).resolve()
    if not resolved.is_dir():
        raise InvalidInput(f"dataset folder {str(path)!r} does not exist or is not a folder")
    return resolved
