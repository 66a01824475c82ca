"""imnet: a small, readable, fast and provably correct ImageNet-1k training reference."""

__version__ = "0.1.0"
