"""llmcycle: the generative-AI project lifecycle on a pretrained model.

The CLI (`llmcycle ...`) and the Python API are the same functions: each verb in `cli.py` parses its flags
and calls one function from the modules below.
"""

__version__ = "0.1.0"
