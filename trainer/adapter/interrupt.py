"""ComfyUI's Cancel: a process-wide flag in ``comfy/model_management.py`` that
``throw_exception_if_processing_interrupted`` turns into ``InterruptProcessingException``."""
from __future__ import annotations


def interrupted() -> bool:
    """True once Cancel was pressed (the flag stays set until ComfyUI's executor clears it)."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is ComfyUI's Cancel (raised from inside an op or a progress-bar update)."""
    import comfy.model_management

    return isinstance(exc, comfy.model_management.InterruptProcessingException)


def raise_if_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if Cancel was pressed (clears the flag)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
