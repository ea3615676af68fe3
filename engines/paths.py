"""Every stage's inputs and outputs, resolved and checked in one place before any work is done.

A stage declares what it reads and what it will write through one `StageIO`; each declaration
raises `UserError` (one line: the path, what is wrong, how to fix it) when the path cannot be
used. Outputs are checked against every input declared before them and against each other, so no
stage can overwrite what it reads, and against the artifact directories they would land in, so no
stage writes into an engine directory (or another directory that owns its files as one unit).

This lives in `engines`, the bottom layer, so engine builders use the same checks as the CLI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from engines.errors import UserError

# A directory holding one of these files is an artifact of its own: its files belong to it and are
# replaced together (by the stage that builds it), never one at a time by another stage. Backends
# or commands that write such directories add their marker with `register_artifact_directory`.
ARTIFACT_DIRECTORY_MARKERS: dict[str, str] = {"engine.json": "engine directory"}
# Files that record other files; an output of that name would silently replace the record.
RESERVED_NAMES: dict[str, str] = {"manifest.json": "the run manifest", "engine.json": "an engine manifest"}
# The run manifest (engines.artifacts.MANIFEST_NAME; not imported, so artifacts can use this module).
_RUN_MANIFEST = "manifest.json"


def register_artifact_directory(marker: str, kind: str) -> None:
    """Declare that a directory holding a file named `marker` is a `kind` (e.g. "bundle directory")."""
    ARTIFACT_DIRECTORY_MARKERS[marker] = kind
    RESERVED_NAMES.setdefault(marker, f"a {kind}'s manifest")


def artifact_directory(path: str | os.PathLike) -> tuple[Path, str] | None:
    """The nearest directory at or above `path` that is an artifact directory, and its kind."""
    for directory in (Path(path), *Path(path).parents):
        for marker, kind in ARTIFACT_DIRECTORY_MARKERS.items():
            if (directory / marker).is_file():
                return directory, kind
    return None


@dataclass
class StageIO:
    """The files and directories one run of a stage reads and writes; see the module docstring.

    `stage` is the stage's name as the run manifest records it ("calibrate", "freeze", ...): an
    output that exists and that the manifest says another stage wrote is refused, so a typo in
    `--out` cannot replace, say, a trained checkpoint.
    """

    stage: str
    inputs: list[Path] = field(default_factory=list)
    input_dirs: list[Path] = field(default_factory=list)  # artifact directories read as a whole
    outputs: list[Path] = field(default_factory=list)

    # --- inputs ------------------------------------------------------------------------------

    def input_file(self, path: str | os.PathLike, hint: str) -> Path:
        """An existing, readable regular file; `hint` says where the right one comes from."""
        p = Path(path)
        if not p.exists():
            raise UserError(f"{p}: no such file; {hint}")
        if p.is_dir():
            raise UserError(f"{p}: is a directory, not a file; {hint}")
        if not p.is_file():
            raise UserError(f"{p}: not a regular file; {hint}")
        if not os.access(p, os.R_OK):
            raise UserError(f"{p}: not readable (permission denied); fix its permissions or copy it")
        self.inputs.append(p.resolve())
        return p

    def input_dir(self, path: str | os.PathLike, hint: str, *, artifact: bool = False) -> Path:
        """An existing, readable directory; with `artifact`, one whose files belong to it (an engine):
        no output may be written inside it."""
        p = Path(path)
        if not p.exists():
            raise UserError(f"{p}: no such directory; {hint}")
        if not p.is_dir():
            raise UserError(f"{p}: is a file, not a directory; {hint}")
        if not os.access(p, os.R_OK | os.X_OK):
            raise UserError(f"{p}: not readable (permission denied); fix its permissions")
        if artifact:
            self.input_dirs.append(p.resolve())
        return p

    # --- outputs -----------------------------------------------------------------------------

    def output_file(self, path: str | os.PathLike, what: str = "output") -> Path:
        """A file this stage will create or replace (atomically). Refused when it is a directory,
        an input, another output, inside an artifact directory, a reserved name, written by another
        stage, or in a place that cannot be written."""
        p = Path(path)
        if str(path) == "" or p.name in ("", ".", ".."):
            raise UserError(f"{what} {str(path)!r}: not a file name; pass a path such as out/model.onnx")
        resolved = p.resolve()
        if p.is_dir():
            raise UserError(f"{p}: is a directory; pass a file path for the {what} (e.g. {p / 'out'}{p.suffix})")
        if p.exists() and not p.is_file():
            raise UserError(f"{p}: exists and is not a regular file; pass a new path for the {what}")
        if p.name in RESERVED_NAMES:
            raise UserError(f"{p}: that name is reserved for {RESERVED_NAMES[p.name]}; choose another name")
        self._not_an_input(p, resolved, what)
        self._not_in_artifact_directory(p, resolved.parent, what)
        self._not_another_stages_file(p, resolved)
        _writable_parent(p, resolved.parent)
        self.outputs.append(resolved)
        return p

    def output_dir(
        self, path: str | os.PathLike, what: str = "output directory", *, replaces: str | None = None
    ) -> Path:
        """A directory this stage creates or writes into; the files it writes there are declared
        with `output_file`. `replaces` names the artifact kind (e.g. "engine directory") when the
        stage replaces the whole directory: then it must be new, empty or one of that kind, and
        hold no input."""
        p = Path(path)
        if str(path) == "":
            raise UserError(f"{what}: empty path; pass a directory such as runs/mine")
        resolved = p.resolve()
        if p.exists() and not p.is_dir():
            raise UserError(f"{p}: is a file; pass a directory path for the {what}")
        own = artifact_directory(resolved)
        if own is not None and not (replaces == own[1] and own[0] == resolved):
            raise UserError(f"{p}: is inside the {own[1]} {own[0]}, whose files belong to it; write elsewhere")
        if replaces is not None:
            for source in [*self.inputs, *self.input_dirs]:
                if source == resolved or resolved in source.parents or source in resolved.parents:
                    raise UserError(f"{p}: replacing it would delete the input {source}; write the {what} elsewhere")
            if own is None and p.is_dir() and any(p.iterdir()):
                raise UserError(f"{p}: exists, is not empty and is not an {replaces}; pass a new or empty directory")
        _writable_parent(p, resolved if p.is_dir() else resolved.parent)
        return p

    # --- checks ------------------------------------------------------------------------------

    def _not_an_input(self, p: Path, resolved: Path, what: str) -> None:
        if resolved in self.inputs:
            raise UserError(
                f"{p}: is also an input of this command; the {what} would overwrite it; choose another path"
            )
        if resolved in self.outputs:
            raise UserError(f"{p}: is already another output of this command; give each output its own path")
        for source in self.input_dirs:
            if source in resolved.parents:
                raise UserError(f"{p}: is inside the input {source}; write the {what} elsewhere")

    def _not_in_artifact_directory(self, p: Path, directory: Path, what: str) -> None:
        own = artifact_directory(directory)
        if own is not None:
            raise UserError(f"{p}: is inside the {own[1]} {own[0]}, whose files belong to it; write elsewhere")

    def _not_another_stages_file(self, p: Path, resolved: Path) -> None:
        if not p.is_file():
            return
        writer = _recorded_stage(resolved)
        if writer is not None and writer != self.stage:
            raise UserError(
                f"{p}: was written by '{writer}' and this '{self.stage}' would replace it; choose another path "
                "(or delete the file first if you mean to replace it)"
            )


def _writable_parent(p: Path, directory: Path) -> None:
    """The directory (or, when it does not exist yet, its nearest existing ancestor) can be written."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{p}: {existing} is a file, not a directory; pass a path whose parent is a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{p}: cannot write in {existing} (permission denied); pass a writable location")


def _recorded_stage(resolved: Path) -> str | None:
    """The stage the run manifest beside `resolved` says wrote it; None when unrecorded or unreadable."""
    manifest = resolved.parent / _RUN_MANIFEST
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        entry = document["artifacts"][resolved.name]
        return str(entry["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

