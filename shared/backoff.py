"""The one backoff: how long to wait before the n-th retry.

The ceiling doubles from `first` up to `cap`; `jitter` is the share of it drawn at random
(1.0: full jitter, anywhere in [0, ceiling]; 0.5: in [ceiling/2, ceiling]; 0: exactly the
ceiling), so many clients retrying at once spread out instead of arriving together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# 2**62 times any first wait exceeds every cap; the exponent stops there so a long run of
# failures cannot overflow a float.
_MAX_DOUBLINGS = 62


@dataclass(frozen=True)
class Backoff:
    first: float
    cap: float
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < 0:
            raise ValueError(f"backoff waits are not negative, not {self.first}, {self.cap}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter is a share, 0 to 1, not {self.jitter}")

    def ceiling(self, retry: int) -> float:
        """The longest wait before the given (1-based) retry."""
        return min(self.cap, self.first * 2.0 ** min(max(retry - 1, 0), _MAX_DOUBLINGS))

    def delay(self, retry: int) -> float:
        """The wait before the given (1-based) retry, jitter applied."""
        return self.ceiling(retry) * (1.0 - self.jitter * random.random())
