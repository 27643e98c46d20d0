"""Every user-facing failure is a TokenforgeError whose message says what to do next."""


class TokenforgeError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class ModelLoadError(TokenforgeError):
    """The model or tokenizer could not be loaded (missing, unsupported or inconsistent)."""


class InvalidOptionError(TokenforgeError, ValueError):
    """A decoding option, method name or sampling parameter is not valid."""


class PromptError(TokenforgeError, ValueError):
    """The prompt is empty or does not fit in the model's context."""


class UnsupportedModelError(TokenforgeError):
    """The model cannot run the requested method (e.g. no custom 4D attention masks)."""


class DatasetError(TokenforgeError):
    """A benchmark dataset is missing or malformed."""


class GuideError(TokenforgeError, ValueError):
    """A guide (grammar, schema, regex, monitor) is not valid; the message quotes the reason."""
