"""tdsp-deploy: put a model into production from one YAML manifest."""

__version__ = "0.1.0"
