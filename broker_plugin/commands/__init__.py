"""The command-line sub-commands, one module each (wired in ``broker_plugin.__main__``)."""
