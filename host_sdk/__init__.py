"""Host SDK for in situ training of mechanical neural networks."""

__version__ = "0.1.0"
