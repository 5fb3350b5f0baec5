"""Number formatting shared by the cost report, its plots and the break-even notes.

One place decides how money and volumes look, so the verdict, the tables and the plot labels
always agree (two decimals for money, three significant figures for request volumes).
"""

from __future__ import annotations


def format_usd(value: float | None) -> str:
    """Money as `$1,234.56`; amounts that round to zero but are not zero show as `<$0.01`."""
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if 0 < magnitude < 0.005:
        return f"{sign}<$0.01"
    return f"{sign}${magnitude:,.2f}"


def format_unit_price(value: float) -> str:
    """A unit price with all its significant digits ($0.0000166667), as the price pages print it."""
    whole, _, fraction = f"{value:.10f}".rstrip("0").partition(".")
    return f"${int(whole):,}.{fraction.ljust(2, '0')}"


def format_requests(value: float) -> str:
    """A monthly volume in words a reader takes in at a glance: `52.1 k`, `2.43 M`, `1.2 B`."""
    for scale, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_mb(value: float) -> str:
    """Memory or storage in MB with thousands separators."""
    return f"{value:,.0f} MB"
