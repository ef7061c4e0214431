"""Benchmarks that print figures: the engine's cost against direct training (`engine`, `mixer sweep bench`) and the
input pipeline against torchvision's (`data`, `mixer data bench`)."""
