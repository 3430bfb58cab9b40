"""An example third-party symdsl plugin (installed by the test suite)."""
