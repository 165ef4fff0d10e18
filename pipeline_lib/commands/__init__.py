"""CLI sub-commands, one module each (see ``pipeline_lib.cli``)."""
