"""The specs shipped with symdsl (YAML files in this folder)."""
