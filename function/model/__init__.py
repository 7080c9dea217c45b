"""The model: sources, runtimes, conversion and its cache, the call queue, the lifecycle."""
