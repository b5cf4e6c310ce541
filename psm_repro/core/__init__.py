"""The library's core: the hooked model and its loading, chat encoding, SAE access, persona files, the finder,
steering, behaviour measures, sampling, statistics and run outputs. Nothing here knows about Hydra or the CLI."""
