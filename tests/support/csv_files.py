"""CSV files of products, as callers send them: the one place tests build them. Tests of
the format itself (tests/unit/test_csv_format.py) and of particular spellings (a BOM,
quoted newlines, trailing cells) write their bytes out in full instead."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

HEADER = ["S. No.", "Product Name", "Input Image Urls"]
RESULT_HEADER = [*HEADER, "Output Image Urls"]


def products_csv(products: Sequence[Sequence[str]]) -> bytes:
    """One row per product, numbered from 1 (`Product N`), its URLs in one quoted cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for n, urls in enumerate(products, start=1):
        writer.writerow([n, f"Product {n}", ", ".join(urls)])
    return out.getvalue().encode()


def batch_csv(urls: Sequence[str], per_row: int = 4) -> bytes:
    """The URLs, per_row to a product."""
    return products_csv([urls[i : i + per_row] for i in range(0, len(urls), per_row)])


# Two products, three images, none of them fetchable: for tests of the API, not the work.
TWO_PRODUCTS = products_csv(
    [["https://img.example/a.jpg", "https://img.example/b.jpg"], ["https://img.example/c.jpg"]]
)
# Rows 3 (serial number) and 4 (a URL without a scheme) are bad; rows as a spreadsheet
# numbers them, the header being row 1.
BAD_ROWS = (
    b"S. No.,Product Name,Input Image Urls\n"
    b"1,Shoe,https://img.example/a.jpg\n"
    b"x,Hat,https://img.example/b.jpg\n"
    b"3,Bag,www.example.com/c.jpg\n"
)
