"""Reading report pages without a browser (html.parser): every element with its attributes, and
every reference a page makes to something outside itself."""

import re
from html.parser import HTMLParser

CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]*)", re.IGNORECASE)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {name: value or "" for name, value in attrs}))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def elements(page: str, **wanted: str) -> list[dict[str, str]]:
    """Attributes of every element whose attributes include `wanted` (data_unit= -> data-unit)."""
    collector = _Collector()
    collector.feed(page)
    wanted = {name.replace("_", "-"): value for name, value in wanted.items()}
    return [dict(attrs, tag=tag) for tag, attrs in collector.found
            if all(name in attrs and (value is None or attrs[name] == value) for name, value in wanted.items())]


def scripts(page: str) -> list[str]:
    collector = _Collector()
    collector.feed(page)
    return collector.scripts


def external_references(page: str) -> list[str]:
    """Every src, href or CSS url() that is neither a data: URI nor a relative path inside the
    page's folder (so: anything with a scheme, a host, an absolute or a parent path)."""
    references = [attrs.get(name, "") for _, attrs in _all(page) for name in ("src", "href") if name in attrs]
    references += CSS_URL.findall(page)
    return [ref for ref in references
            if not ref.startswith("data:") and (re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", ref) or ref.startswith("/")
                                                or ref.startswith("..") or "/../" in ref)]


def _all(page: str) -> list[tuple[str, dict[str, str]]]:
    collector = _Collector()
    collector.feed(page)
    return collector.found
