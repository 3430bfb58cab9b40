"""The ``symdsl`` command line."""
