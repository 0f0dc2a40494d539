"""What a class declares about itself, read explicitly, filled in from its hooks when unset.

:class:`~distkeras_async.worker.keras_worker.KerasWorker` and
:class:`~distkeras_async.worker.exchange.SessionHooks` say what they do differently through
class attributes (``steps_itself``, ``checks_divergence``, ...): the library reads only those.
A subclass may set one; when neither it nor a class between it and the base did, the value
follows from the hooks it has (its own, a parent's or a mixin's), so a class written before
the declarations existed keeps its behaviour. This is the one place that looks at hooks.
"""

from __future__ import annotations

from collections.abc import Mapping

_INFERRED = "_inferred_declarations"


def fill_declarations(cls: type, base: type, declared_by: Mapping[str, tuple[str, ...]]) -> None:
    """Set every declaration of ``cls`` that no class up to ``base`` set explicitly.

    Args:
        cls: the new subclass (from ``base.__init_subclass__``).
        base: the class whose hooks are the defaults.
        declared_by: ``{declaration: hooks}``: a declaration is True when ``cls`` has any of
            its hooks other than ``base``'s.
    """
    inferred = set()
    for declaration, hooks in declared_by.items():
        if _set_explicitly(cls, base, declaration):
            continue
        value = any(getattr(cls, hook) is not getattr(base, hook) for hook in hooks)
        setattr(cls, declaration, value)
        inferred.add(declaration)
    setattr(cls, _INFERRED, frozenset(inferred))


def _set_explicitly(cls: type, base: type, declaration: str) -> bool:
    for klass in cls.__mro__:
        if klass is base:
            return False
        own = vars(klass)
        if declaration in own and declaration not in own.get(_INFERRED, ()):
            return True
    return False
