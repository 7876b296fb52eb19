"""coophash: supervised deep image hashing with generated data."""
__version__ = "0.1.0"
