"""flowmake: a content-addressed build tool for data pipelines that reads Snakemake-style rule files."""

__version__ = "0.1.0"
