"""User-facing errors.

Every problem a user can fix (a bad knob, a missing file, a malformed line) raises one of these with a
single-line message that names the problem and the fix; the entry point prints it without a traceback
and exits non-zero.
"""

from __future__ import annotations


class RecbenchError(Exception):
    """A problem the user can fix; its message is one line: what is wrong, then how to fix it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(RecbenchError):
    """An impossible or unknown configuration value (raised before any data is loaded where possible)."""


class DataError(RecbenchError):
    """A missing, malformed or unusable data file."""


class BudgetError(ConfigError):
    """A size budget (``method.budget``) that the method cannot reach on a table.

    Why its own type: on an equal-memory grid an unreachable budget is a property of the method
    (its fixed part, or its smallest setting, is larger than the budget), not a broken run. The run
    is still recorded FAILED, but with ``floor`` (the smallest budget this table reaches, a fraction
    of its full float32 size) so a report can say "not reachable (min X %)" instead of "failed".
    ``method`` is the layer's class name. Build one with ``BudgetError.unreachable``.
    """

    def __init__(self, message: str, floor: float, method: str, num_ids: int = 0) -> None:
        super().__init__(message)
        self.floor = float(floor)
        self.method = str(method)
        self.num_ids = int(num_ids)

    def __reduce__(self) -> tuple:  # a sweep's launcher may pickle it (Exception pickles args)
        return (type(self), (str(self), self.floor, self.method, self.num_ids))

    @property
    def key(self) -> str:
        """The budget key the message names: ``method.budget`` (``user_method.budget`` once
        renamed for the user table's method)."""
        return str(self).split("=", 1)[0]

    @classmethod
    def unreachable(
        cls, method: str, budget: float, num_ids: int, floor: float, detail: str, hint: str = ""
    ) -> BudgetError:
        """The one message format of every solver: the budget asked, the table, the floor with
        the setting that reaches it (``detail``, e.g. ``rank=1``), the budget to ask for instead
        (the floor rounded up to 6 significant digits, so it is reachable) and the method's own
        ``hint`` on the knob that sets the floor (e.g. ``or fewer method.num_hashes``)."""
        return cls(
            f"method.budget={budget} is impossible for {method} with {num_ids} ids: the smallest "
            f"achievable budget is {floor:.6g} ({detail}); set method.budget >= "
            f"{round_up(floor)}" + (f" {hint}" if hint else ""),
            floor,
            method,
            num_ids,
        )


def round_up(value: float, digits: int = 6) -> str:
    """``value`` rounded up to ``digits`` significant digits, as plain decimal text (no exponent,
    so Hydra reads it back as the same number): a budget written this way is never below ``value``."""
    from decimal import ROUND_CEILING, Context, Decimal

    up = Context(prec=digits, rounding=ROUND_CEILING).create_decimal(Decimal(repr(float(value))))
    return format(up.normalize(), "f")
