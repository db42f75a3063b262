"""Training: the Trainer glue, metrics callbacks, run files, data, evaluation, run comparison
and the command line (`python -m idlora_core.train`)."""
