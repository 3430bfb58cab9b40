"""Research code that uses the library but is not part of it: trainers for the small models the
benchmarks and the demo align (``train``), and ``symdsl demo`` (``demo``)."""
