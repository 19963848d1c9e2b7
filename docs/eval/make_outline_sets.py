"""Writes question → page sets from the outlines (bookmarks) of PDFs: each outline entry's title
is a question, its answer the pages from the entry's page to the next entry's. Used for the
per-language retrieval evaluation (examples/eval_retrieval.rs); the sets are committed beside this
script, so it only runs again to change them.

    pip install pypdf==6.*
    python3 docs/eval/make_outline_sets.py ../shared/data/pdfs docs/eval

Sets: install-ru (Russian), lshort-fa (Persian), lshort-zh (Chinese), lshort-en (English),
amiri-doc-ar (Arabic). Titles of fewer than 4 letters, titles that are only numbers, repeated
titles and the front matter (title pages, acknowledgements, contents) are left out.
"""
import json
import os
import re
import sys

from pypdf import PdfReader

SETS = {
    "install-ru.pdf": "ru",
    "lshort-fa.pdf": "fa",
    "lshort-zh.pdf": "zh",
    "lshort-en.pdf": "en",
    "amiri-doc-ar.pdf": "ar",
}
FRONT = re.compile(r"^(标题页|中文版致谢|英文版致谢|目录|Contents|Thank you!|پیشگفتار مترجم|فهرست)", re.I)


def entries(reader, outline, out):
    for item in outline:
        if isinstance(item, list):
            entries(reader, item, out)
        else:
            try:
                out.append((item.title, reader.get_destination_page_number(item) + 1))
            except Exception:
                pass
    return out


def main() -> None:
    pdfs, dest = sys.argv[1], sys.argv[2]
    for name, lang in SETS.items():
        reader = PdfReader(os.path.join(pdfs, name))
        items = entries(reader, reader.outline, [])
        items.sort(key=lambda e: e[1])
        seen = set()
        rows = []
        for i, (title, page) in enumerate(items):
            title = re.sub(r"\s+", " ", title.replace("\u00a0", " ")).strip()
            title = re.sub(r"^[\d.]+\s*", "", title)  # "2.1 Title" -> "Title"
            letters = sum(ch.isalpha() for ch in title)
            if letters < 4 or FRONT.match(title) or title in seen:
                continue
            seen.add(title)
            following = [p for _, p in items[i + 1 :] if p > page]
            end = max(page, (following[0] if following else page))
            rows.append({"id": f"{name[:-4]}:{len(rows) + 1}", "doc": name, "lang": lang, "question": title,
                         "page_start": page, "page_end": end})
        with open(os.path.join(dest, f"{name[:-4]}.outline.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} questions", file=sys.stderr)


main()
