"""The classifier, transport-free: photo sources in, a :class:`~function.core.results.Classification` out."""
