"""Bird-photo classifier: the AIY birds model from TF Hub behind HTTP, CloudEvent and CLI entries."""
