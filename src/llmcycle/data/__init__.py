"""Loading rows from files or the hub, turning them into prompt/completion examples, and validating them."""

from .formats import Example, LoadedData, load_examples
from .io import Row, read_rows
from .template import Template, load_template

__all__ = ["Example", "LoadedData", "Row", "Template", "load_examples", "load_template", "read_rows"]
