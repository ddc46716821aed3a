"""Text of a PDF, read with pypdf: what citationExtraction parses when no GROBID is set."""

from __future__ import annotations

import io

from pypdf import PdfReader

MAX_PAGES = 500


class UnreadablePdf(ValueError):
    pass


def pdf_text(data: bytes) -> str:
    """Text of every page in order. CPU-bound: call it in a thread."""
    if not data.startswith(b"%PDF-"):
        raise UnreadablePdf("not a PDF (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = reader.pages[:MAX_PAGES]
        return "\n".join(page.extract_text() or "" for page in pages)
    except Exception as exc:  # pypdf raises many types for damaged files
        raise UnreadablePdf(f"{type(exc).__name__}: {exc}") from exc
