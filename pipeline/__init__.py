"""semdistill pipeline: Ray Data stages, config and CLI."""
