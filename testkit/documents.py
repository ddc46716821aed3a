"""Real PDFs for citationExtraction tests, generated with fpdf2: a title, a body paragraph and a
numbered reference list, as a preprint lays them out."""

from __future__ import annotations

from fpdf import FPDF


def paper_pdf(title: str, references: list[str], body: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.multi_cell(0, 8, title)
    pdf.set_font("Helvetica", size=11)
    pdf.ln(4)
    pdf.multi_cell(
        0,
        6,
        body
        or "We study the problem at hand and build on earlier work [1]. "
        "Our results extend what was known before, see also [2].",
    )
    if references:
        pdf.ln(6)
        pdf.set_font("Helvetica", "B", 13)
        pdf.cell(0, 8, "References", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=10)
        for i, reference in enumerate(references, 1):
            pdf.multi_cell(0, 5, f"[{i}] {reference}")
            pdf.ln(1)
    return bytes(pdf.output())
