"""symdsl's built-in plugins, written exactly as a third-party plugin package would be."""
