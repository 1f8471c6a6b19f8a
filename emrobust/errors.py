"""User-facing errors: raised while validating a cell, before any model is loaded."""


class ConfigError(ValueError):
    """Bad user input. The message names the file/field/value at fault."""

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None):
        prefix = ""
        if file:
            prefix = f"{file}"
            if where:
                prefix += f" ({where})"
            prefix += ": "
        super().__init__(prefix + message)
        self.file = file
        self.where = where
