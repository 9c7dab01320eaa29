"""What ``train.py`` is built from: its options (``config``), the presets and their history (``presets``) and the
helpers its loop calls (``lib``: data, validation, checkpoints, logs, export). Above the serving package: nothing
in ``segmenter`` outside this folder imports it."""
