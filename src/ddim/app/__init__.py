"""The application layer: the `ddim` command line and the demo."""
