"""Loading spec files: YAML -> structure check -> :class:`Spec`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .schema import SpecModel, validate_structure
from .source import SpecSource, parse_spec_text, read_spec_file


@dataclass
class Spec:
    """A structurally valid spec file, not yet bound to a model.

    >>> spec = load_spec_text("symdsl: 1\\nname: tiny\\n")
    >>> spec.name
    'tiny'
    """

    document: SpecModel     # the parsed, structure-checked YAML document
    source: SpecSource      # the text with each key path's file:line:col, for error messages
    # may its example.factory be imported and called? Only for specs of installed plugins, or on
    # the user's opt-in (trust_code=True, --trust-code): a spec file is data (docs/security.md)
    trusted: bool = False

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def file(self) -> str:
        return self.source.file


def load_spec(path: str | Path, *, trust_code: bool = False) -> Spec:
    """Load and structure-check a spec file; raise SpecError naming file:line:col on problems.

    ``trust_code``: allow the spec's ``example.factory`` to be imported and called.
    """
    source = read_spec_file(path)
    return Spec(validate_structure(source), source, trusted=trust_code)


def load_spec_text(text: str, file: str = "<spec>", *, trust_code: bool = False) -> Spec:
    """Like :func:`load_spec` for YAML text already in memory."""
    source = parse_spec_text(text, file)
    return Spec(validate_structure(source), source, trusted=trust_code)
