"""What every report page is made of: escaping, attributes, data: URIs, JSON inside <script>,
the templates of deploy/report/templates/ filled in, and the atomic write of the page.

Everything that comes from outside (file names, settings, notes) goes through `text` or
`attributes` (html.escape with quotes), relative links through `relative_url` (percent-encoded,
so '#', '?', '%' or '"' in a file name stay part of the path), and JSON placed in a <script>
element through `json_for_script` (no '<', '>' or '&' left: '</script>' cannot end it early).
"""

import base64
import functools
import html
import json
import string
import sys
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

from common.fileio import write_text_atomic

TEMPLATES = Path(__file__).resolve().parent / "templates"
NOT_AVAILABLE = "n/a"


def text(value: Any) -> str:
    """Any value -> its str, safe as HTML text and inside a double- or single-quoted attribute."""
    return html.escape(str(value), quote=True)


def attributes(pairs: Mapping[str, Any]) -> str:
    """{"data-unit": "a<b", "class": None} -> ' data-unit="a&lt;b"' (None values are left out)."""
    return "".join(f' {name}="{text(value)}"' for name, value in pairs.items() if value is not None)


def element(tag: str, content: str = "", **pairs: Any) -> str:
    """<tag attributes>content</tag>; `content` is HTML (escape text first); keyword names use
    '_' for '-' (data_unit= -> data-unit=) and class_ for class."""
    named = {name.rstrip("_").replace("_", "-"): value for name, value in pairs.items()}
    return f"<{tag}{attributes(named)}>{content}</{tag}>"


def void_element(tag: str, **pairs: Any) -> str:
    """<tag attributes> for elements without content (img, input); keywords as for `element`."""
    named = {name.rstrip("_").replace("_", "-"): value for name, value in pairs.items()}
    return f"<{tag}{attributes(named)}>"


def data_uri(data: bytes, mime: str) -> str:
    """Bytes -> a base64 data: URI (an image embedded in the page itself)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def relative_url(relative_path: str) -> str:
    """A path inside the page's folder ('thumbnails/a b#1.jpg') -> a relative URL that points at
    exactly that file ('thumbnails/a%20b%231.jpg'); escape it with `attributes` as any value."""
    if relative_path.startswith("/") or ":" in relative_path.split("/")[0]:
        raise ValueError(f"not a relative path inside the page's folder: {relative_path!r}")
    return quote(relative_path, safe="/")


def json_for_script(data: Any) -> str:
    """JSON to place inside <script type="application/json">: '<', '>', '&' and the two JavaScript
    line separators are written as \\u escapes, so no text in it can close the element."""
    encoded = json.dumps(data, ensure_ascii=False, allow_nan=False)
    for character, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                              ("\u2029", "\\u2029")):
        encoded = encoded.replace(character, escape)
    return encoded


def percent(value: float | None, digits: int = 1) -> str:
    """0.8061 -> '80.6'; None -> 'n/a'."""
    return NOT_AVAILABLE if value is None else f"{100 * value:.{digits}f}"


def fill(template_name: str, **fields: str) -> str:
    """A whole page: the body template deploy/report/templates/<template_name> with its $fields
    replaced (the values are inserted as they are: they must already be HTML), inside page.html
    (the document, its `title` field and the embedded stylesheet), which every page shares."""
    body = string.Template((TEMPLATES / template_name).read_text(encoding="utf-8")).substitute(fields)
    shell = string.Template((TEMPLATES / "page.html").read_text(encoding="utf-8"))
    return shell.substitute(title=fields["title"], style=style(), body=body)


def style() -> str:
    """The stylesheet every page embeds."""
    return (TEMPLATES / "report.css").read_text(encoding="utf-8")


def script(name: str) -> str:
    """A script of templates/ to embed; '</' is broken up so it cannot end the <script> element."""
    return (TEMPLATES / name).read_text(encoding="utf-8").replace("</", "<\\/")


def write_page(path: Path, page: str) -> Path:
    """Write the page atomically (a reader never sees half of it); returns its path."""
    write_text_atomic(Path(path), page)
    return Path(path)


def never_fatal(what: str) -> Callable[[Callable], Callable]:
    """Decorator of the functions the engine calls: a page that cannot be written is one warning
    line on stderr (and None), never the end of a run whose results are saved or about to be: a
    report is secondary to the checkpoints and CSVs of a training that took hours."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - whatever went wrong, the run goes on
                message = " ".join(str(error).split())[:300]
                print(f"warning: {what} not written ({type(error).__name__}: {message}); the results are not "
                      "affected", file=sys.stderr)
                return None
        return guarded
    return decorate
