"""csv_format: every rule of DESIGN.md "The CSV", both ways, plus fuzzing and round trips."""

from __future__ import annotations

import codecs
import csv
import io
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgpipe.common.errors import InvalidArgument, ResourceExhausted
from imgpipe.common.grpc_errors import to_status
from imgpipe.ingest.csv_format import (
    DEFAULT_LIMITS,
    MAX_VIOLATIONS_BYTES,
    RESULT_HEADER,
    CsvLimits,
    Product,
    ResultRow,
    neutralised,
    parse_products,
    result_csv,
)
from imgpipe.ingest.errors import CsvError, CsvTooLarge

HEADER = "S. No.,Product Name,Input Image Urls"
A = "http://example.com/a.jpg"
B = "https://cdn.example.com/b.png?w=1"


def csv_of(*rows: str, newline: str = "\n") -> bytes:
    return newline.join(rows).encode() + newline.encode()


def problems(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> list[tuple[str, str]]:
    with pytest.raises(CsvError) as info:
        parse_products(data, limits)
    return info.value.violations


def fields(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> list[str]:
    return [field for field, _ in problems(data, limits)]


# ---- accepted input ----------------------------------------------------------------------


def test_rows_become_products_in_file_order() -> None:
    data = csv_of(HEADER, f'7,Shoe,"{A},{B}"', f"2,Hat,{B}", f"5,Sock,{A}")
    assert parse_products(data) == [
        Product(7, "Shoe", (A, B)),
        Product(2, "Hat", (B,)),
        Product(5, "Sock", (A,)),
    ]


def test_bom_and_crlf() -> None:
    data = codecs.BOM_UTF8 + csv_of(HEADER, f'1,Shoe,"{A},\r\n{B}"', newline="\r\n")
    assert parse_products(data) == [Product(1, "Shoe", (A, B))]


def test_old_mac_line_ends() -> None:
    assert parse_products(csv_of(HEADER, f"1,Shoe,{A}", newline="\r")) == [Product(1, "Shoe", (A,))]


def test_quoted_multiline_cell_with_spaces_and_empty_items() -> None:
    cell = f'"  {A} ,\n\n , {B}\r\n,,{A}\n,"'
    assert parse_products(csv_of(HEADER, f"1,Shoe,{cell}")) == [Product(1, "Shoe", (A, B, A))]


def test_same_url_twice_takes_two_slots() -> None:
    assert parse_products(csv_of(HEADER, f'1,Shoe,"{A},{A}"')) == [Product(1, "Shoe", (A, A))]


@pytest.mark.parametrize(
    "header",
    [HEADER, HEADER + ",Image 2,Image 3", HEADER + ",,"],
    ids=["unnamed", "named", "blank"],
)
def test_cells_after_the_third_are_more_urls(header: str) -> None:
    data = csv_of(header, f'1,Shoe,"{A},{B}",{B}, ,,"{A}\n{B}",', f"2,Hat,{A},,")
    assert parse_products(data) == [
        Product(1, "Shoe", (A, B, B, A, B)),
        Product(2, "Hat", (A,)),
    ]


def test_spaces_after_commas_before_quoted_cells() -> None:
    data = csv_of(HEADER, f'1, "Shoe, red",  "{A}, {B}"')
    assert parse_products(data) == [Product(1, "Shoe, red", (A, B))]


SERIAL_HEADINGS = ["S. No.", "S.No", "Serial Number", "SerialNumber", "serial", "sno", "No"]
NAME_HEADINGS = ["Product Name", "ProductName", "name"]
URLS_HEADINGS = ["Input Image Urls", "InputImageUrls", "Image URLs", "Image Url", "urls"]


@pytest.mark.parametrize(
    "header",
    [f"{heading},Product Name,urls" for heading in SERIAL_HEADINGS]
    + [f"sno,{heading},urls" for heading in NAME_HEADINGS]
    + [f"sno,name,{heading}" for heading in URLS_HEADINGS]
    + ["SERIAL_NUMBER,product_name,IMAGE-URLS", " s . no . ,Product-Name,input_image_urls"],
)
def test_loose_header_names(header: str) -> None:
    assert parse_products(csv_of(header, f"1,Shoe,{A}")) == [Product(1, "Shoe", (A,))]


def test_blank_lines_are_skipped() -> None:
    data = csv_of("", HEADER, "", " ", ",,,", f"1,Shoe,{A}", "\t,  ,", f"2,Hat,{A}", "")
    assert parse_products(data) == [Product(1, "Shoe", (A,)), Product(2, "Hat", (A,))]


def test_blank_lines_count_as_rows() -> None:
    # Row 1 blank, header row 2, rows 3 to 5 blank, row 6, row 7 blank, row 8.
    data = csv_of("", HEADER, "", " ", ",,,", f"1,Shoe,{A}", "", f"x,Hat,{A}")
    assert fields(data) == ["csv.row[8].serial_number"]


def test_multiline_record_is_one_row() -> None:
    data = csv_of(HEADER, f'1,"Shoe\nwith\nlaces",{A}', f"1,Hat,{A}")
    assert fields(data) == ["csv.row[3].serial_number"]
    assert parse_products(data.replace(b"1,Hat", b"2,Hat"))[0].product_name == "Shoe\nwith\nlaces"


@pytest.mark.parametrize(
    ("cell", "serial"),
    [("1", 1), (" 42 ", 42), ("\t7", 7), ("007", 7), ("2147483647", 2**31 - 1)],
)
def test_serial_numbers(cell: str, serial: int) -> None:
    assert parse_products(csv_of(HEADER, f"{cell},Shoe,{A}"))[0].serial_number == serial


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        ("Shoe", "Shoe"),
        ("  Red  shoe\t", "Red  shoe"),
        ('"Shoe, ""deluxe"""', 'Shoe, "deluxe"'),
        ("=HYPERLINK(1)", "=HYPERLINK(1)"),
        ('"Chaussure bleue, taille 42 — été"', "Chaussure bleue, taille 42 — été"),
        ("靴 👟", "靴 👟"),
        ('"two\nlines"', "two\nlines"),
    ],
)
def test_product_names_are_kept_as_given_but_trimmed(cell: str, name: str) -> None:
    assert parse_products(csv_of(HEADER, f"1,{cell},{A}"))[0].product_name == name


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "HTTPS://EXAMPLE.COM/A.JPG",
        "https://example.com:8443/a%20b.jpg?x=1&y=2#frag",
        "http://192.0.2.1/a.jpg",
        "http://[2001:db8::1]:8080/a.jpg",
        "https://例え.jp/画像.jpg",
        "https://example.com/a@2x.jpg",
        "http://example.com/" + "a" * (2048 - len("http://example.com/")),
    ],
)
def test_valid_urls_are_kept_verbatim(url: str) -> None:
    assert parse_products(csv_of(HEADER, f"1,Shoe,{url}"))[0].urls == (url,)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@example.com/a.jpg",
        "https://hunter2@example.com/a.jpg",
        "http://:hunter2@e.com/",
    ],
)
def test_urls_with_credentials_are_refused_without_repeating_them(url: str) -> None:
    """Credentials would be stored, logged and shown to whoever reads the request."""
    with pytest.raises(CsvError) as caught:
        parse_products(csv_of(HEADER, f"1,Shoe,{url}"))
    (field, description), *_ = caught.value.violations
    assert field == "csv.row[2].input_image_urls"
    assert "user info" in description
    assert "hunter2" not in caught.value.message + description


def test_the_image_cap_holds_at_under_and_over() -> None:
    limits = CsvLimits(max_images=4)
    at = csv_of(HEADER, f"1,Shoe,{A},{B}", f"2,Hat,{A},{B}")
    under = csv_of(HEADER, f"1,Shoe,{A},{B}", f"2,Hat,{A}")
    over = csv_of(HEADER, f"1,Shoe,{A},{B}", f"2,Hat,{A},{B}", f"3,Cap,{A}")
    assert sum(len(p.urls) for p in parse_products(at, limits)) == 4
    assert sum(len(p.urls) for p in parse_products(under, limits)) == 3
    with pytest.raises(CsvError) as caught:
        parse_products(over, limits)
    assert caught.value.violations[0][0] == "csv"
    assert "more than 4 images" in caught.value.message
    assert "IMGPIPE_MAX_IMAGES_PER_REQUEST" in caught.value.message


def test_limits_are_inclusive() -> None:
    data = csv_of(HEADER, f'1,Shoe,"{A},{A}"', f"2,Hat,{A}")
    limits = CsvLimits(max_bytes=len(data), max_rows=2, max_urls_per_row=2, max_url_length=len(A))
    assert len(parse_products(data, limits)) == 2


# ---- rejected input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\n\n", b"\r\n  \r\n", b",,,\n", codecs.BOM_UTF8, codecs.BOM_UTF8 + b"\r\n"],
)
def test_empty_file(data: bytes) -> None:
    assert problems(data) == [
        ("csv", "the file is empty: it needs a header row, then a row per product")
    ]


def test_header_without_rows() -> None:
    assert fields(csv_of(HEADER, "", ",,")) == ["csv"]


def test_missing_header() -> None:
    assert problems(csv_of(f"1,Shoe,{A}", f"2,Hat,{A}")) == [
        (
            "csv",
            "no header: row 1 holds a product, where the header "
            "(S. No., Product Name, Input Image Urls) goes",
        )
    ]


@pytest.mark.parametrize(
    ("header", "columns"),
    [
        ("S. No.,Product Name", [3]),
        ("S. No.", [2, 3]),
        ("Product Name,S. No.,Input Image Urls", [1, 2]),
        ("S. No.,Product Name,Price", [3]),
        ("Serial No,Title,Image URLs", [1, 2]),
        ("S. No.;Product Name;Input Image Urls", [1, 2, 3]),
        ("Input Image Urls,Product Name,S. No.", [1, 3]),
    ],
)
def test_wrong_header_names_each_bad_column(header: str, columns: list[int]) -> None:
    found = problems(csv_of(header, f"1,Shoe,{A}"))
    assert [field for field, _ in found] == ["csv.header"] * len(columns)
    descriptions = " ".join(description for _, description in found)
    assert re.findall(r"column (\d)", descriptions) == [str(column) for column in columns]


def test_header_after_blank_lines_keeps_its_row_number() -> None:
    ((field, description),) = problems(csv_of("", " ", "S. No.,Product Name,Price", f"1,x,{A}"))
    assert field == "csv.header"
    assert description.startswith("row 3, column 3 is 'Price'")


def test_rows_are_still_checked_after_a_bad_header() -> None:
    assert fields(csv_of("S. No.,Title,URLs", f"0,Shoe,{A}")) == [
        "csv.header",
        "csv.row[2].serial_number",
    ]


@pytest.mark.parametrize(
    "cell",
    ["1.5", "-1", "0", "abc", "+1", "1e3", "1 2", "٣", "2147483648", "99999999999", "0x10", ""],
)
def test_bad_serial_numbers(cell: str) -> None:
    assert fields(csv_of(HEADER, f"{cell},Shoe,{A}")) == ["csv.row[2].serial_number"]


def test_repeated_serial_names_the_first_row() -> None:
    data = csv_of(HEADER, f"1,Shoe,{A}", f"2,Hat,{A}", f" 01 ,Sock,{A}", f"2,Cap,{A}")
    assert problems(data) == [
        ("csv.row[4].serial_number", "serial number 1 repeats: row 2 has it first"),
        ("csv.row[5].serial_number", "serial number 2 repeats: row 3 has it first"),
    ]


@pytest.mark.parametrize("cell", ["", "  ", '" \n "'])
def test_empty_product_name(cell: str) -> None:
    assert fields(csv_of(HEADER, f"1,{cell},{A}")) == ["csv.row[2].product_name"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("1,Shoe", ["input_image_urls"]),
        ("1", ["product_name", "input_image_urls"]),
        ("Shoe", ["serial_number", "product_name", "input_image_urls"]),
        ("1,Shoe,", ["input_image_urls"]),
        ('1,Shoe," , ,\n"', ["input_image_urls"]),
        ("1,Shoe,,,, ,", ["input_image_urls"]),
    ],
)
def test_rows_without_urls(row: str, expected: list[str]) -> None:
    assert fields(csv_of(HEADER, row)) == [f"csv.row[2].{column}" for column in expected]


@pytest.mark.parametrize(
    "url",
    [
        "www.example.com/a.jpg",
        "example.com",
        "/a.jpg",
        "//example.com/a.jpg",
        "'http://example.com/a.jpg'",
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http:///a.jpg",
        "https:example.com/a.jpg",
        "http://@/a.jpg",
        "http://:80/a.jpg",
        "http://example.com:99999/a.jpg",
        "http://example.com:http/a.jpg",
        "http://example.com:0/a.jpg",
        "http://[::1/a.jpg",
    ],
)
def test_urls_that_are_not_absolute_http(url: str) -> None:
    assert problems(csv_of(HEADER, f"1,Shoe,{A},{csv_cell(url)}")) == [
        (
            "csv.row[2].input_image_urls",
            f"URL 2: {url!r} is not an absolute http(s) URL with a host",
        )
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://exa mple.com/a.jpg",
        "http://example.com/a\tb.jpg",
        "http://example.com/a\x01.jpg",
        "http://example.com/a\x7f.jpg",
        "http://example.com/a\x85.jpg",
        "http://example.com/a\u00a0.jpg",
        "http://example.com/a\u200b.jpg",
        "http://example.com/a\u2028.jpg",
    ],
)
def test_urls_with_whitespace_or_control_characters(url: str) -> None:
    assert problems(csv_of(HEADER, f"1,Shoe,{csv_cell(url)}")) == [
        ("csv.row[2].input_image_urls", f"URL 1: {url!r} contains whitespace or control characters")
    ]


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@pytest.mark.parametrize(
    ("cell", "bad"),
    [
        ("http://example.com/products/red-\nshoe.jpg", {2: "shoe.jpg"}),
        ("http://exam\nple.com/a.jpg", {2: "ple.com/a.jpg"}),
        ("http:/\n/example.com/a.jpg", {1: "http:/", 2: "/example.com/a.jpg"}),
        ("htt\r\np://example.com/a.jpg", {1: "htt", 2: "p://example.com/a.jpg"}),
    ],
)
def test_url_broken_by_a_line_feed_is_two_items(cell: str, bad: dict[int, str]) -> None:
    assert problems(csv_of(HEADER, f"1,Shoe,{csv_cell(cell)}")) == [
        (
            "csv.row[2].input_image_urls",
            f"URL {i}: {url!r} is not an absolute http(s) URL with a host",
        )
        for i, url in bad.items()
    ]


def test_url_broken_into_two_valid_urls_is_two_urls() -> None:
    data = csv_of(HEADER, '1,Shoe,"http://example.com/?next=\nhttps://example.org/a.jpg"')
    assert parse_products(data)[0].urls == (
        "http://example.com/?next=",
        "https://example.org/a.jpg",
    )


def test_comma_inside_a_url_splits_it() -> None:
    data = csv_of(HEADER, '1,Shoe,"https://res.example.com/w_100,h_100/a.jpg"')
    assert fields(data) == ["csv.row[2].input_image_urls"]
    url = "https://res.example.com/w_100%2Ch_100/a.jpg"
    assert parse_products(csv_of(HEADER, f"1,Shoe,{url}"))[0].urls == (url,)


def test_url_too_long() -> None:
    long = f"{A}/{'x' * 20}"
    found = problems(csv_of(HEADER, f"1,Shoe,{A}", f"2,Hat,{long}"), CsvLimits(max_url_length=30))
    assert found == [
        ("csv.row[3].input_image_urls", f"URL 1: {long!r} is 45 characters long; the limit is 30")
    ]


def test_too_many_urls() -> None:
    limits = CsvLimits(max_urls_per_row=2)
    assert problems(csv_of(HEADER, f'1,Shoe,"{A},{A}",{A}'), limits) == [
        ("csv.row[2].input_image_urls", "3 URLs; the limit is 2")
    ]


def test_too_many_rows_stops_reading() -> None:
    limits = CsvLimits(max_rows=2)
    data = csv_of(HEADER, f"1,Shoe,{A}", f"0,Hat,{A}", "", f"3,Sock,{A}", "junk")
    assert problems(data, limits) == [
        (
            "csv.row[3].serial_number",
            f"serial number '0' is not a whole number from 1 to {2**31 - 1}",
        ),
        ("csv", "more than 2 products (row 5 is one too many)"),
    ]


def test_too_large() -> None:
    data = csv_of(HEADER, f"1,Shoe,{A}")
    with pytest.raises(CsvTooLarge) as info:
        parse_products(data, CsvLimits(max_bytes=len(data) - 1))
    assert isinstance(info.value, ResourceExhausted)
    assert info.value.message == f"the CSV is {len(data)} bytes; the limit is {len(data) - 1} bytes"


def test_undecodable_bytes_name_offset_and_line() -> None:
    data = codecs.BOM_UTF8 + csv_of(HEADER, f"1,Shoe,{A}") + b"2,Caf\xe9,x\n"
    offset = data.index(b"\xe9")
    assert problems(data) == [
        ("csv", f"not UTF-8: byte 0xe9 at offset {offset} (line 3); save it as CSV UTF-8")
    ]


def test_nul_bytes() -> None:
    data = csv_of(HEADER, f"1,Sh\0oe,{A}")
    assert problems(data) == [
        ("csv", f"NUL byte at offset {data.index(0)} (line 2): is it UTF-16? Save it as CSV UTF-8")
    ]


def test_utf16_file() -> None:
    assert fields(csv_of(HEADER, f"1,Shoe,{A}").decode().encode("utf-16")) == ["csv"]


@pytest.mark.parametrize(
    "row",
    [f'1,"Shoe,{A}', f'1,"Shoe"x,{A}', f'1,"Shoe" ,{A}'],
    ids=["never-closed", "text-after-quote", "space-after-quote"],
)
def test_broken_quoting_stops_with_the_rows_so_far(row: str) -> None:
    data = csv_of(HEADER, f"0,Hat,{A}", f'2,"Long\nname",{A}', row, f"4,Sock,{A}", "0,,")
    found = problems(data)
    assert [field for field, _ in found] == ["csv.row[2].serial_number", "csv.row[4]"]
    assert "row starting on line 5:" in found[1][1]


def test_all_problems_are_reported_in_order() -> None:
    data = csv_of(
        HEADER,
        f"1,Shoe,{A}",
        f"abc,,www.example.com/a.jpg,{A}",
        "1,Hat",
        f'3,Sock,"{A}\nftp://x/y.jpg"',
    )
    assert fields(data) == [
        "csv.row[3].serial_number",
        "csv.row[3].product_name",
        "csv.row[3].input_image_urls",
        "csv.row[4].serial_number",
        "csv.row[4].input_image_urls",
        "csv.row[5].input_image_urls",
    ]


def test_error_is_invalid_argument_with_a_summary() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_products(csv_of(HEADER, f"0,Shoe,{A}", f"2,,{A}"))
    assert info.value.message == (
        "invalid CSV: csv.row[2].serial_number: serial number '0' is not a whole number "
        "from 1 to 2147483647 (and 1 more problem)"
    )


def size_of(violations: list[tuple[str, str]]) -> int:
    return sum(len(field) + len(description.encode()) for field, description in violations)


def test_violations_are_capped_with_a_count_of_the_rest() -> None:
    *kept, last = problems(csv_of(HEADER, *(f"0,Shoe,{A}" for _ in range(500))))
    assert 40 < len(kept) < 500
    assert [field for field, _ in kept] == [
        f"csv.row[{row}].serial_number" for row in range(2, len(kept) + 2)
    ]
    assert size_of(kept) <= MAX_VIOLATIONS_BYTES
    assert last == ("csv", f"... and {500 - len(kept)} more problems")


@pytest.mark.parametrize(
    "row",
    [
        f"0,Shoe,{A}",
        f"1,Shoe,{A}",
        "1,,",
        f"{'9' * 500},Shoe,{A}",
        f"1,Shoe,www.example.com/{'é' * 500}",
        f"1,Shoe,http://example.com/{chr(1) * 500}",
        f"1,Shoe,{A}/{'x' * 3000}",
    ],
    ids=["bad", "repeated", "empty", "long-serial", "long-url", "control-chars", "too-long"],
)
def test_the_error_fits_in_grpc_trailers(row: str) -> None:
    """gRPC clients refuse trailers over 8 KiB; that would lose the whole BadRequest."""
    with pytest.raises(CsvError) as info:
        parse_products(csv_of(HEADER, *([row] * 1000)))
    status = to_status(info.value)
    assert sum(len(key) + len(value) for key, value in status.trailing_metadata) < 6 * 1024


def test_long_values_are_shortened_in_messages() -> None:
    ((_, description),) = problems(csv_of(HEADER, f"1,Shoe,{'x' * 1000}"))
    assert len(description) < 150


# ---- result CSV --------------------------------------------------------------------------


def test_result_csv_layout() -> None:
    rows = [
        ResultRow(1, "Shoe", [A, B, A], ["http://o/1.jpg", "", "http://o/3.jpg"]),
        ResultRow(2, "Hat, red", [B], [""]),
    ]
    assert result_csv(rows) == (
        b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"
        b'1,Shoe,"http://example.com/a.jpg,https://cdn.example.com/b.png?w=1,'
        b'http://example.com/a.jpg","http://o/1.jpg,,http://o/3.jpg"\r\n'
        b'2,"Hat, red",https://cdn.example.com/b.png?w=1,\r\n'
    )


def test_result_csv_without_rows_is_the_header() -> None:
    assert result_csv([]) == b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"


def test_result_csv_round_trip_and_encoding() -> None:
    rows = [
        ResultRow(3, 'Été "deluxe"\nshoe', [A, B], ["", "http://o/2.jpg"]),
        ResultRow(1, "靴", [A], ["http://o/1.jpg"]),
    ]
    data = result_csv(rows)
    assert not data.startswith(codecs.BOM_UTF8)
    read = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert read == [
        list(RESULT_HEADER),
        ["3", 'Été "deluxe"\nshoe', f"{A},{B}", ",http://o/2.jpg"],
        ["1", "靴", A, "http://o/1.jpg"],
    ]


@pytest.mark.parametrize(
    "name", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "=cmd|'/c calc'!A0"]
)
def test_result_csv_neutralises_formulas(name: str) -> None:
    (_, row) = csv.reader(io.StringIO(result_csv([ResultRow(1, name, [A], [""])]).decode()))
    assert row[1] == "'" + name


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("Shoe;=1+1", "Shoe;'=1+1"),
        ("a; @SUM(A1)", "a; '@SUM(A1)"),
        ("x\t-2", "x\t'-2"),
        ("=a;+b", "'=a;'+b"),
        ("a,=cmd|'/c calc'!A0", "a,'=cmd|'/c calc'!A0"),
    ],
)
def test_result_csv_neutralises_formulas_after_separators(name: str, written: str) -> None:
    """A spreadsheet that splits cells on `;` (many locales) or tabs starts a cell there."""
    (_, row) = csv.reader(io.StringIO(result_csv([ResultRow(1, name, [A], [""])]).decode()))
    assert row[1] == written


@pytest.mark.parametrize("name", ["a=b", " =x", "'=x", "Shoe", "a;b", "5 - 3"])
def test_result_csv_keeps_harmless_names(name: str) -> None:
    (_, row) = csv.reader(io.StringIO(result_csv([ResultRow(1, name, [A], [""])]).decode()))
    assert row[1] == name


def test_result_csv_writes_urls_verbatim() -> None:
    """A program matches outputs to inputs by URL, so URLs are not neutralised."""
    url = "http://a.test/x;@b?q=1;=c"
    (_, row) = csv.reader(io.StringIO(result_csv([ResultRow(1, "s", [url], [url])]).decode()))
    assert row[2:] == [url, url]


def test_result_csv_needs_an_output_per_input() -> None:
    with pytest.raises(ValueError, match="product 1: not one output URL per input URL"):
        result_csv([ResultRow(1, "Shoe", [A, B], [""])])


# ---- properties --------------------------------------------------------------------------

FUZZ_LIMITS = CsvLimits(max_bytes=4000, max_rows=20, max_urls_per_row=5, max_url_length=40)
FIELD = re.compile(r"csv(\.header|\.row\[\d+\](\.(serial_number|product_name|input_image_urls))?)?")
CSV_PIECES = [
    *(",", '"', "\n", "\r\n", "\r", " ", "\t", "\0", "\ufeff", "é", "x"),
    *("0", "1", "2", "-1", "http://", "https://a.b/c", "www.a.b", A, HEADER, "S. No.", "urls"),
]


def check_rejection(data: bytes) -> None:
    try:
        products = parse_products(data, FUZZ_LIMITS)
    except CsvError as exc:
        assert exc.violations
        assert size_of(exc.violations[:-1]) <= MAX_VIOLATIONS_BYTES
        assert all(FIELD.fullmatch(field) and description for field, description in exc.violations)
    except CsvTooLarge:
        assert len(data) > FUZZ_LIMITS.max_bytes
    else:
        assert products
        assert len({p.serial_number for p in products}) == len(products)
        assert all(p.product_name and p.urls for p in products)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_rejection(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(CSV_PIECES), max_size=200))
def test_fuzz_csv_like_text(pieces: list[str]) -> None:
    check_rejection("".join(pieces).encode())


urls = st.builds(
    "{}://{}{}/{}".format,
    st.sampled_from(["http", "https", "HTTP"]),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.sampled_from(["", ":8080", ":1"]),
    st.text(
        alphabet=st.characters(
            categories=["L", "N"], include_characters=string.punctuation.replace(",", "")
        ),
        max_size=30,
    ),
)
names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
    min_size=1,
    max_size=40,
).filter(lambda name: name == name.strip() and bool(name))
products = st.lists(
    st.builds(
        Product,
        st.integers(1, 2**31 - 1),
        names,
        st.lists(urls, min_size=1, max_size=6).map(tuple),
    ),
    min_size=1,
    max_size=10,
    unique_by=lambda p: p.serial_number,
)


@st.composite
def written_csvs(draw: st.DrawFn) -> tuple[list[Product], bytes]:
    """Products, and a CSV of them written with the csv module in one of the accepted ways."""
    wanted = draw(products)
    # Python 3.11's writer leaves a lone CR unquoted unless the line terminator has one.
    has_cr = any("\r" in product.product_name for product in wanted)
    out = io.StringIO()
    writer = csv.writer(
        out, lineterminator="\r\n" if has_cr else draw(st.sampled_from(["\r\n", "\n"]))
    )
    writer.writerow(
        [
            draw(st.sampled_from(["S. No.", "Serial Number", "sno"])),
            draw(st.sampled_from(["Product Name", "name"])),
            draw(st.sampled_from(["Input Image Urls", "Image URLs", "urls"])),
        ]
    )
    for product in wanted:
        if draw(st.booleans()):
            writer.writerow([])
        in_third = draw(st.integers(1, len(product.urls)))
        separator = draw(st.sampled_from([",", "\n", ", ", " ,\r\n ", ",,"]))
        serial = draw(st.sampled_from(["{}", " {} ", "0{}"])).format(product.serial_number)
        trailing = draw(st.sampled_from([[], [""], ["", " "]]))
        writer.writerow(
            [
                serial,
                product.product_name,
                separator.join(product.urls[:in_third]),
                *product.urls[in_third:],
                *trailing,
            ]
        )
    bom = codecs.BOM_UTF8 if draw(st.booleans()) else b""
    return wanted, bom + out.getvalue().encode()


@settings(max_examples=200, deadline=None)
@given(written_csvs())
def test_csvs_written_by_the_csv_module_round_trip(case: tuple[list[Product], bytes]) -> None:
    wanted, data = case
    assert parse_products(data) == wanted


@settings(max_examples=100, deadline=None)
@given(products)
def test_result_csv_round_trips_through_the_csv_module(wanted: list[Product]) -> None:
    rows = [ResultRow(p.serial_number, p.product_name, p.urls, p.urls) for p in wanted]
    read = list(csv.reader(io.StringIO(result_csv(rows).decode(), newline="")))
    assert read[0] == list(RESULT_HEADER)
    for product, (serial, name, inputs, outputs) in zip(wanted, read[1:], strict=True):
        assert int(serial) == product.serial_number
        assert name == neutralised(product.product_name)
        assert inputs.split(",") == outputs.split(",") == list(product.urls)
