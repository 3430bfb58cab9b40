"""symdsl: align and merge independently trained Transformers modulo their parameter-space symmetries.

The symmetries of an architecture are declared in a YAML spec (see docs/spec-language.md),
checked numerically (``symdsl check``), and applied by one generic action engine.

>>> from symdsl.spec.registry import find_spec
>>> find_spec("hf-gpt2").name
'hf-gpt2'
"""
__version__ = "0.1.0"
