"""The products CSV callers upload, and the result CSV imgpipe writes back.

Input (DESIGN.md, "The CSV"): UTF-8 with or without a BOM; CRLF, LF or CR line ends; RFC 4180
quoting, strictly (a quote never closed, or a closing quote followed by anything but a comma
or the line end, is an error); spaces after a comma are skipped. The first row that is not
blank is the header: its first three cells name, loosely (case, spaces, dots, underscores
and hyphens aside), the serial number, product name and image URLs; later cells are ignored.

Each later row is a product: serial number (a whole number, 1 to 2**31 - 1), product name,
then URLs. The third cell and every cell after it hold URLs separated by commas and/or line
feeds; spaces around them and empty items are ignored, so a comma inside a URL must be
written %2C. Every URL takes a slot, repeats included. Cells are stripped of surrounding
whitespace, product names kept otherwise as given. Rows of blank cells only are skipped.

Every problem is reported (the first 4 KiB of them; a last violation counts the rest) as a
field violation: `csv` (the whole file, or no header), `csv.header`, `csv.row[N]` (broken
quoting) or `csv.row[N].<column>`. N is the row number a spreadsheet shows: the csv module's
records counted from 1 at the top, blank ones included, a quoted cell spanning lines being
one row. So the header is row 1 and the first product row 2, unless blank lines come first.
Bad bytes (not UTF-8, NUL) and broken quoting end the parse: nothing after them is certain.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from imgpipe.ingest.errors import CsvError, CsvTooLarge

MAX_SERIAL = 2**31 - 1  # serial numbers are int32 in the protos
# Violations kept, in bytes of field and description (some 50): they travel in gRPC trailers,
# and clients refuse trailers over 8 KiB by default, losing the whole BadRequest.
MAX_VIOLATIONS_BYTES = 4096
RESULT_HEADER = ("S. No.", "Product Name", "Input Image Urls", "Output Image Urls")

# The csv module refuses cells over 128 KiB by default, which 100 long URLs in one cell
# exceed. CsvLimits.max_bytes bounds every cell already, so lift it (process-wide, once).
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))

_HEADER = (  # (what the column holds, its name, the names accepted once made loose)
    ("serial number", "S. No.", {"sno", "serialnumber", "serial", "no"}),
    ("product name", "Product Name", {"productname", "name"}),
    ("image URLs", "Input Image Urls", {"inputimageurls", "imageurls", "imageurl", "urls"}),
)
_IGNORED_IN_HEADER = re.compile(r"[\s._-]+")
_URL_SEPARATORS = re.compile(r"[,\r\n]")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP, CSV injection
# A formula character after a separator starts a cell too where a spreadsheet splits on
# it (`;` in many locales, tabs when pasted): "a;=1+1" is neutralised as "a;'=1+1".
_FORMULA_AFTER_SEPARATOR = re.compile(r"([,;\t\r\n|]\s*)([=+\-@])")


@dataclass(frozen=True)
class Product:
    serial_number: int
    product_name: str
    urls: tuple[str, ...]  # in input order, repeats kept


@dataclass(frozen=True)
class CsvLimits:
    # 100,000 images (max_images) of some 160 bytes each: the largest request that makes sense.
    max_bytes: int = 16 * 1024 * 1024
    max_rows: int = 100_000  # product rows
    max_urls_per_row: int = 100
    max_url_length: int = 2048  # characters
    max_images: int = 100_000  # in the whole request (IMGPIPE_MAX_IMAGES_PER_REQUEST)


DEFAULT_LIMITS = CsvLimits()


@dataclass(frozen=True)
class ResultRow:
    serial_number: int
    product_name: str
    input_urls: Sequence[str]
    output_urls: Sequence[str]  # same positions as input_urls; "" where the image failed


class _Problems:
    """Field violations: the first MAX_VIOLATIONS_BYTES of them kept, the rest only counted."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []
        self.total = 0
        self.size = 0  # bytes of every field and description so far, kept or not

    def add(self, field: str, description: str) -> None:
        self.total += 1
        self.size += len(field) + len(description.encode())
        if self.size <= MAX_VIOLATIONS_BYTES:
            self.violations.append((field, description))

    def error(self) -> CsvError:
        field, description = self.violations[0]
        more = self.total - 1
        message = f"invalid CSV: {field}: {description}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        dropped = self.total - len(self.violations)
        tail = [("csv", f"... and {dropped} more problems")] if dropped else []
        return CsvError(message, self.violations + tail)


def parse_products(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> list[Product]:
    """The products in data, in file order; raises CsvError naming every problem found."""
    if len(data) > limits.max_bytes:
        raise CsvTooLarge(f"the CSV is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    problems = _Problems()
    records = _records(_decode(data, problems), problems)
    header = next(records, None)
    if header is None:
        problems.add("csv", "the file is empty: it needs a header row, then a row per product")
        raise problems.error()
    _check_header(*header, problems)
    products: list[Product] = []
    first_row_of: dict[int, int] = {}  # serial number -> row it first appeared on
    rows = images = 0
    for row, cells in records:
        rows += 1
        if rows > limits.max_rows:
            problems.add("csv", f"more than {limits.max_rows} products (row {row} is one too many)")
            raise problems.error()
        product = _product(row, cells, limits, first_row_of, problems)
        if product is not None:
            products.append(product)
            images += len(product.urls)
            if images > limits.max_images:
                problems.add(
                    "csv",
                    f"more than {limits.max_images} images (row {row} goes past it); the limit "
                    "per request is IMGPIPE_MAX_IMAGES_PER_REQUEST: split the file",
                )
                raise problems.error()
    if not rows:
        problems.add("csv", "no products: the file has a header but no rows after it")
    if problems.total:
        raise problems.error()
    return products


def result_csv(rows: Iterable[ResultRow]) -> bytes:
    """The result CSV: the input rows with their output URLs, as UTF-8 with CRLF line ends."""
    return result_csv_header() + b"".join(result_csv_line(row) for row in rows)


def result_csv_header() -> bytes:
    return _csv_line(RESULT_HEADER)


def result_csv_line(row: ResultRow) -> bytes:
    """One product's line of the result CSV, so it can be written a line at a time."""
    if len(row.input_urls) != len(row.output_urls):
        raise ValueError(f"product {row.serial_number}: not one output URL per input URL")
    # URL cells are written verbatim: programs join them with their inputs, and each URL
    # was checked to start with http(s)://, so no cell starts a formula.
    inputs, outputs = ",".join(row.input_urls), ",".join(row.output_urls)
    return _csv_line([str(row.serial_number), neutralised(row.product_name), inputs, outputs])


def _csv_line(cells: Sequence[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().encode()


def neutralised(cell: str) -> str:
    """cell as a spreadsheet shows it as text, never running it as a formula (OWASP CSV
    injection): a quote before a formula character that starts it or follows a separator."""
    cell = _FORMULA_AFTER_SEPARATOR.sub(r"\1'\2", cell)
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _decode(data: bytes, problems: _Problems) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        problems.add("csv", f"NUL byte at {_where(data, nul)}: is it UTF-16? Save it as CSV UTF-8")
        raise problems.error()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        problems.add(
            "csv",
            f"not UTF-8: byte {data[offset]:#04x} at {_where(data, offset)}; save it as CSV UTF-8",
        )
        raise problems.error() from None


def _where(data: bytes, offset: int) -> str:
    return f"offset {offset} (line {len(data[: offset + 1].splitlines())})"


def _records(text: str, problems: _Problems) -> Iterator[tuple[int, list[str]]]:
    """The rows that are not blank, with their row numbers."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, skipinitialspace=True)
    row = 0
    while True:
        row += 1
        first_line = reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            problems.add(
                f"csv.row[{row}]",
                f"broken quoting in the row starting on line {first_line}: {exc} (a quoted cell "
                "must end with a quote followed by a comma or the end of the line)",
            )
            raise problems.error() from None
        if cells is None:
            return
        if any(cell.strip() for cell in cells):
            yield row, cells


def _check_header(row: int, cells: list[str], problems: _Problems) -> None:
    if _serial(cells[0]) is not None:
        names = ", ".join(name for _, name, _ in _HEADER)
        problems.add(
            "csv", f"no header: row {row} holds a product, where the header ({names}) goes"
        )
        return
    for column, (what, name, accepted) in enumerate(_HEADER, start=1):
        if column > len(cells):
            problems.add("csv.header", f"row {row}, column {column} is missing: expected {name!r}")
        elif _IGNORED_IN_HEADER.sub("", cells[column - 1]).casefold() not in accepted:
            problems.add(
                "csv.header",
                f"row {row}, column {column} is {_show(cells[column - 1])}, "
                f"not a {what} heading such as {name!r}",
            )


def _product(
    row: int, cells: list[str], limits: CsvLimits, first_row_of: dict[int, int], problems: _Problems
) -> Product | None:
    """The product in a row, or None when the row has problems (added to problems)."""
    problems_before = problems.total

    def add(column: str, description: str) -> None:
        problems.add(f"csv.row[{row}].{column}", description)

    serial_cell, name_cell, *url_cells = cells + [""] * (3 - len(cells))
    serial = _serial(serial_cell)
    if serial is None:
        shown = _show(serial_cell.strip())
        add("serial_number", f"serial number {shown} is not a whole number from 1 to {MAX_SERIAL}")
    elif (first := first_row_of.setdefault(serial, row)) != row:
        add("serial_number", f"serial number {serial} repeats: row {first} has it first")

    name = name_cell.strip()
    if not name:
        add("product_name", "the product name is empty")

    urls = [url for c in url_cells for item in _URL_SEPARATORS.split(c) if (url := item.strip())]
    if not urls:
        add("input_image_urls", "no image URLs")
    elif len(urls) > limits.max_urls_per_row:
        add("input_image_urls", f"{len(urls)} URLs; the limit is {limits.max_urls_per_row}")
    for index, url in enumerate(urls, start=1):
        if problem := _url_problem(url, limits.max_url_length):
            add("input_image_urls", f"URL {index}: {problem}")

    if serial is None or problems.total != problems_before:
        return None
    return Product(serial, name, tuple(urls))


def _serial(cell: str) -> int | None:
    text = cell.strip()
    if not (text.isascii() and text.isdecimal()):
        return None
    digits = text.lstrip("0")  # leading zeros aside, at most 10 digits reach int()
    return int(digits) if 0 < len(digits) <= 10 and int(digits) <= MAX_SERIAL else None


def _url_problem(url: str, max_length: int) -> str | None:
    if len(url) > max_length:
        return f"{_show(url)} is {len(url)} characters long; the limit is {max_length}"
    if " " in url or not url.isprintable():
        return f"{_show(url)} contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        # .port raises ValueError when the port is not a number from 0 to 65535
        if parts.scheme in ("http", "https") and parts.hostname and parts.port != 0:
            if "@" in parts.netloc:
                # Credentials would be stored, logged and shown to whoever reads the request.
                return "URLs with user info (user:password@) are refused: no credentials"
            return None
    except ValueError:
        pass
    return f"{_show(url)} is not an absolute http(s) URL with a host"


def _show(text: str, limit: int = 60) -> str:
    """text quoted for a message, shortened when long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
